//! The console's view of the fleet: a searchable, filterable, sortable
//! page of devices with its total, and the counts of the overview.
//!
//! Firmware version is not a filter yet: the registry has no firmware
//! column (a device reports its version in its state document, which the
//! telemetry tables keep as JSON). It becomes a filter when OTA adds a
//! column for it.

use serde::Serialize;
use time::OffsetDateTime;

use crate::{Device, DeviceState, Owner};

/// Most devices one page holds; larger limits are clamped to this.
pub const MAX_PAGE: u32 = 500;

/// How a device list is ordered. Every order ends with the device id, so
/// pages never overlap or skip a device when values tie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSort {
    /// By id.
    #[default]
    Id,
    /// By last contact; devices never seen come last in both directions.
    LastSeen,
    /// By registration time.
    Created,
    /// By expiry of the current certificate.
    CertExpiry,
}

impl DeviceSort {
    /// Every order.
    pub const ALL: [DeviceSort; 4] = [
        DeviceSort::Id,
        DeviceSort::LastSeen,
        DeviceSort::Created,
        DeviceSort::CertExpiry,
    ];

    /// The name used in URLs (`?sort=last_seen`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceSort::Id => "id",
            DeviceSort::LastSeen => "last_seen",
            DeviceSort::Created => "created",
            DeviceSort::CertExpiry => "cert_expiry",
        }
    }

    /// The SQL expression sorted on (columns of the shared device query).
    pub(crate) fn column(self) -> &'static str {
        match self {
            DeviceSort::Id => "d.id",
            DeviceSort::LastSeen => "d.last_seen",
            DeviceSort::Created => "d.created_at",
            DeviceSort::CertExpiry => "c.not_after",
        }
    }
}

impl std::str::FromStr for DeviceSort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                format!("unknown sort '{s}' (expected id, last_seen, created or cert_expiry)")
            })
    }
}

/// How the search text matches device ids (ASCII case ignored; `%` and
/// `_` are plain characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMatch {
    /// Ids starting with the text.
    Prefix(String),
    /// Ids containing the text.
    Contains(String),
}

/// Which devices to list, in which order, which page.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    /// Match on the id.
    pub id: Option<IdMatch>,
    /// Only devices in this state.
    pub state: Option<DeviceState>,
    /// Only devices connected (`true`) or not (`false`) right now.
    pub online: Option<bool>,
    /// Only devices of this owner.
    pub owner: Option<Owner>,
    /// Only devices whose current certificate expires before this.
    pub cert_expires_before: Option<OffsetDateTime>,
    /// Only devices whose last reported state (`state/up`) names this
    /// firmware version (`"fw"`).
    pub firmware: Option<String>,
    /// Order.
    pub sort: DeviceSort,
    /// Largest first.
    pub descending: bool,
    /// Page size (clamped to 1..=[`MAX_PAGE`]).
    pub limit: u32,
    /// Devices to skip.
    pub offset: u32,
}

impl DeviceQuery {
    /// The page size actually used.
    pub fn page_size(&self) -> u32 {
        self.limit.clamp(1, MAX_PAGE)
    }

    /// `ORDER BY` for this query. Built from the enum only, never from
    /// caller text.
    pub(crate) fn order_by(&self) -> String {
        let dir = if self.descending { "DESC" } else { "ASC" };
        match self.sort {
            DeviceSort::Id => format!("d.id {dir}"),
            other => format!("{} {dir} NULLS LAST, d.id {dir}", other.column()),
        }
    }
}

/// One page of devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DevicePage {
    /// The devices of this page, in order.
    pub devices: Vec<Device>,
    /// Devices matching the filters, on every page.
    pub total: u64,
    /// Offset of this page.
    pub offset: u32,
    /// Page size used.
    pub limit: u32,
}

/// Counts for the fleet overview.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct FleetSummary {
    /// Registered devices.
    pub total: u64,
    /// Devices per state, every state listed (zero included), in lifecycle order.
    pub by_state: Vec<(DeviceState, u64)>,
    /// Devices connected right now.
    pub online: u64,
}

impl FleetSummary {
    /// A summary from `(state, devices, online)` rows, filling in states
    /// that have none.
    pub(crate) fn from_rows(rows: impl IntoIterator<Item = (DeviceState, u64, u64)>) -> Self {
        let mut s = FleetSummary {
            by_state: DeviceState::ALL.iter().map(|&st| (st, 0)).collect(),
            ..Self::default()
        };
        for (state, n, online) in rows {
            s.total += n;
            s.online += online;
            if let Some(slot) = s.by_state.iter_mut().find(|(st, _)| *st == state) {
                slot.1 += n;
            }
        }
        s
    }
}

/// A `LIKE` pattern for `m` (escape character `\`).
pub(crate) fn id_pattern(m: &IdMatch) -> String {
    match m {
        IdMatch::Contains(t) => crate::records::contains_pattern(t),
        IdMatch::Prefix(t) => {
            let mut p = crate::records::contains_pattern(t);
            // contains_pattern wraps in `%...%`; a prefix keeps only the tail one.
            p.remove(0);
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_by_ends_with_the_id_and_puts_unseen_devices_last() {
        let q = DeviceQuery {
            sort: DeviceSort::LastSeen,
            descending: true,
            ..DeviceQuery::default()
        };
        assert_eq!(q.order_by(), "d.last_seen DESC NULLS LAST, d.id DESC");
        assert_eq!(DeviceQuery::default().order_by(), "d.id ASC");
    }

    #[test]
    fn patterns_escape_wildcards() {
        assert_eq!(id_pattern(&IdMatch::Prefix("a_1%".into())), "a\\_1\\%%");
        assert_eq!(id_pattern(&IdMatch::Contains("x".into())), "%x%");
    }

    #[test]
    fn page_size_is_clamped() {
        let q = |limit| {
            DeviceQuery {
                limit,
                ..DeviceQuery::default()
            }
            .page_size()
        };
        assert_eq!((q(0), q(50), q(100_000)), (1, 50, MAX_PAGE));
    }

    #[test]
    fn sort_names_round_trip() {
        for s in DeviceSort::ALL {
            assert_eq!(s.as_str().parse::<DeviceSort>(), Ok(s));
        }
        assert!("name".parse::<DeviceSort>().is_err());
    }
}
