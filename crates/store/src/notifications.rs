//! Notifications: messages to one console user that persist until read
//! (a claim that bound its device or failed finally; later alerts and
//! rollouts). The [`NotificationStore`] trait, its types, and the pure
//! rules for what a claim's end says.
//!
//! A notification is written in the transaction of the event it reports
//! (see `complete_claim` and `end_claim` of both backends), so a claim
//! never ends without its notification, nor the other way round.

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;

use crate::{Actor, Claim, ClaimStatus, Result, StoreError};

/// Longest `kind`.
pub const MAX_KIND: usize = 64;
/// Longest title, in characters.
pub const MAX_TITLE: usize = 200;
/// Longest body, in characters.
pub const MAX_BODY: usize = 2000;
/// Most notifications returned by one query.
pub const MAX_NOTIFICATION_PAGE: u32 = 200;

/// Kind of the notification for a claim that bound its device.
pub const KIND_CLAIM_BOUND: &str = "claim.bound";
/// Kind of the notification for a claim that expired or was refused.
pub const KIND_CLAIM_FAILED: &str = "claim.failed";

/// A notification to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    /// The recipient's user id.
    pub user_id: String,
    /// A stable dotted code, e.g. `claim.bound`.
    pub kind: String,
    /// One line.
    pub title: String,
    /// The details, plain text.
    pub body: String,
    /// A console path to follow (`/devices/pump-1`), if any.
    pub link: Option<String>,
}

impl NewNotification {
    /// Refuses an empty or oversized kind, title or body, and a link that
    /// is not a path of this console (no `//host` or `javascript:`).
    pub fn check(&self) -> Result<()> {
        let refuse = |why: &'static str| Err(StoreError::InvalidNotification(why));
        if self.user_id.is_empty() {
            return refuse("it has no recipient");
        }
        if self.kind.is_empty()
            || self.kind.len() > MAX_KIND
            || !self
                .kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
        {
            return refuse("its kind must be 1 to 64 of a-z, 0-9, '.' and '_'");
        }
        if self.title.trim().is_empty() || self.title.chars().count() > MAX_TITLE {
            return refuse("its title must have 1 to 200 characters");
        }
        if self.body.chars().count() > MAX_BODY {
            return refuse("its body may have at most 2000 characters");
        }
        if let Some(link) = &self.link
            && !is_local_path(link)
        {
            return refuse("its link must be a path of the console, starting with one '/'");
        }
        Ok(())
    }
}

/// `/x...` but not `//host`, `/\host`, nor anything with control characters.
fn is_local_path(link: &str) -> bool {
    link.starts_with('/')
        && !link.starts_with("//")
        && !link.starts_with("/\\")
        && link.len() <= 512
        && !link.chars().any(char::is_control)
}

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Its number (ascending in time).
    pub id: u64,
    /// The recipient's user id.
    #[serde(skip)]
    pub user_id: String,
    /// A stable dotted code, e.g. `claim.bound`.
    pub kind: String,
    /// One line.
    pub title: String,
    /// The details.
    pub body: String,
    /// A console path to follow.
    pub link: Option<String>,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When its recipient marked it read.
    #[serde(with = "time::serde::rfc3339::option")]
    pub read_at: Option<OffsetDateTime>,
}

/// Which of a user's notifications to list, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationQuery {
    /// Only those with a smaller id (the next page's cursor).
    pub before: Option<u64>,
    /// Only unread ones.
    pub unread_only: bool,
    /// At most this many (capped at [`MAX_NOTIFICATION_PAGE`]).
    pub limit: u32,
}

impl Default for NotificationQuery {
    fn default() -> Self {
        Self {
            before: None,
            unread_only: false,
            limit: 50,
        }
    }
}

impl NotificationQuery {
    /// `(before, unread_only, limit)` as the backends bind them.
    pub(crate) fn bound(&self) -> (i64, bool, i64) {
        (
            self.before
                .map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            self.unread_only,
            i64::from(self.limit.clamp(1, MAX_NOTIFICATION_PAGE)),
        )
    }
}

/// One page of a user's notifications and their unread count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationPage {
    /// The notifications, newest first.
    pub notifications: Vec<Notification>,
    /// How many of the user's notifications are unread (all pages).
    pub unread: u64,
}

/// Users' notifications, implemented by both backends with the same
/// semantics. Only the recipient's own are ever read or changed: every
/// method takes the user id.
#[async_trait]
pub trait NotificationStore: Send + Sync + std::fmt::Debug {
    /// Writes a notification (checked with [`NewNotification::check`]),
    /// audited as `notification.create`. An unknown user is
    /// [`StoreError::UserNotFound`].
    async fn add_notification(
        &self,
        notification: NewNotification,
        actor: &Actor,
    ) -> Result<Notification>;

    /// One page of `user_id`'s notifications, newest first, with the
    /// unread count.
    async fn notifications(
        &self,
        user_id: &str,
        query: &NotificationQuery,
    ) -> Result<NotificationPage>;

    /// How many of `user_id`'s notifications are unread.
    async fn unread_notifications(&self, user_id: &str) -> Result<u64>;

    /// Marks `user_id`'s unread notifications read, those up to id
    /// `up_to` when given (what the reader saw), all otherwise; returns how
    /// many changed. Audited as `notification.read` when any did.
    async fn mark_notifications_read(
        &self,
        user_id: &str,
        up_to: Option<u64>,
        at: OffsetDateTime,
        actor: &Actor,
    ) -> Result<u64>;
}

/// What a claim's end tells the person who started it: `status` is
/// `bound`, `expired` or `refused` (with the claim's reason code); `None`
/// for any other status (a superseded claim was replaced by its starter).
/// `user_id` is the starter's user id.
pub fn claim_notification(
    claim: &Claim,
    status: ClaimStatus,
    reason: Option<&str>,
    user_id: &str,
) -> Option<NewNotification> {
    let device = claim.device.as_str();
    let (kind, title, body, link) = match status {
        ClaimStatus::Bound => (
            KIND_CLAIM_BOUND,
            format!("{device} is claimed"),
            format!(
                "The device confirmed claim {} and now belongs to {}.",
                claim.id, claim.owner
            ),
            format!("/devices/{device}"),
        ),
        ClaimStatus::Expired => (
            KIND_CLAIM_FAILED,
            format!("Claim of {device} expired"),
            format!(
                "The device did not confirm claim {} in time. Check that it is online and claim it again.",
                claim.id
            ),
            format!("/claim?id={}", claim.id),
        ),
        ClaimStatus::Refused => (
            KIND_CLAIM_FAILED,
            format!("Claim of {device} was refused"),
            format!(
                "Claim {} ended without binding the device ({}). Check the label and claim it again.",
                claim.id,
                reason.unwrap_or("refused")
            ),
            format!("/claim?id={}", claim.id),
        ),
        ClaimStatus::Pending | ClaimStatus::Superseded => return None,
    };
    Some(NewNotification {
        user_id: user_id.to_owned(),
        kind: kind.to_owned(),
        title,
        body,
        link: Some(link),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rampart_proto::DeviceId;

    use super::*;
    use crate::Owner;

    fn claim() -> Claim {
        Claim {
            id: 7,
            device: DeviceId::parse("pump-1").expect("id"),
            owner: Owner::User("ann".into()),
            nonce: "00".into(),
            status: ClaimStatus::Pending,
            reason: None,
            attempts: 0,
            created_at: OffsetDateTime::UNIX_EPOCH,
            expires_at: OffsetDateTime::UNIX_EPOCH,
            finished_at: None,
        }
    }

    #[test]
    fn a_claims_end_says_what_happened_and_links_to_it() {
        let c = claim();
        let n = claim_notification(&c, ClaimStatus::Bound, None, "u1").expect("bound");
        assert_eq!(
            (n.kind.as_str(), n.title.as_str(), n.link.as_deref()),
            ("claim.bound", "pump-1 is claimed", Some("/devices/pump-1"))
        );
        assert!(n.body.contains("user:ann"), "{}", n.body);
        assert_eq!(n.user_id, "u1");
        n.check().expect("valid");
        let n = claim_notification(&c, ClaimStatus::Refused, Some("claim_attempts"), "u1")
            .expect("refused");
        assert_eq!(n.kind, "claim.failed");
        assert!(n.body.contains("claim_attempts"), "{}", n.body);
        assert_eq!(n.link.as_deref(), Some("/claim?id=7"));
        let n = claim_notification(&c, ClaimStatus::Expired, None, "u1").expect("expired");
        assert!(n.title.contains("expired"));
        assert_eq!(
            claim_notification(&c, ClaimStatus::Superseded, None, "u1"),
            None
        );
        assert_eq!(
            claim_notification(&c, ClaimStatus::Pending, None, "u1"),
            None
        );
    }

    #[test]
    fn bad_notifications_are_refused() {
        let ok = NewNotification {
            user_id: "u1".into(),
            kind: "alert.fired".into(),
            title: "Hot".into(),
            body: String::new(),
            link: Some("/devices/a".into()),
        };
        ok.check().expect("valid");
        for bad in [
            NewNotification {
                kind: "Alert".into(),
                ..ok.clone()
            },
            NewNotification {
                title: " ".into(),
                ..ok.clone()
            },
            NewNotification {
                body: "x".repeat(MAX_BODY + 1),
                ..ok.clone()
            },
            NewNotification {
                link: Some("//evil.example".into()),
                ..ok.clone()
            },
            NewNotification {
                link: Some("javascript:alert(1)".into()),
                ..ok.clone()
            },
            NewNotification {
                user_id: String::new(),
                ..ok.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn only_local_paths_are_links(link in "\\PC{0,40}") {
            let local = is_local_path(&link);
            if local {
                prop_assert!(link.starts_with('/'));
                prop_assert!(!link.starts_with("//"));
            }
            let with_host = format!("//{link}");
            prop_assert!(!is_local_path(&with_host));
        }

        #[test]
        fn the_page_limit_is_always_in_range(limit in any::<u32>(), before in any::<Option<u64>>()) {
            let (b, _, l) = NotificationQuery { before, unread_only: false, limit }.bound();
            prop_assert!((1..=i64::from(MAX_NOTIFICATION_PAGE)).contains(&l));
            prop_assert!(b >= 0);
        }
    }
}
