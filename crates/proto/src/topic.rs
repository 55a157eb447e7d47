//! Topic names: `devices/{id}/{category}/{direction}` (DESIGN.md "Topics").

use std::fmt;

use crate::DeviceId;

/// First topic level of every device topic.
pub const ROOT: &str = "devices";

/// What a device topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Measurements, single or batched (up only).
    Telemetry,
    /// Reported (up) or desired (down) state.
    State,
    /// Claim confirmation (up) or claim request (down).
    Bind,
    /// Update progress (up) or update offer (down).
    Ota,
    /// Renewal CSR (up) or new certificate (down).
    Cert,
    /// Command result (up) or command (down).
    Cmd,
}

impl Category {
    /// All categories, in the order of DESIGN.md.
    pub const ALL: [Category; 6] = [
        Category::Telemetry,
        Category::State,
        Category::Bind,
        Category::Ota,
        Category::Cert,
        Category::Cmd,
    ];

    /// The topic level naming this category.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Telemetry => "telemetry",
            Category::State => "state",
            Category::Bind => "bind",
            Category::Ota => "ota",
            Category::Cert => "cert",
            Category::Cmd => "cmd",
        }
    }

    /// Parses a topic level into a category.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Who sends on a topic: the device (`up`) or the platform (`down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Device → platform.
    Up,
    /// Platform → device.
    Down,
}

impl Direction {
    /// The topic level naming this direction.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// A parsed device topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTopic {
    /// The device the topic belongs to.
    pub device: DeviceId,
    /// What it carries.
    pub category: Category,
    /// Who sends on it.
    pub direction: Direction,
}

impl DeviceTopic {
    /// Builds the topic for `device`.
    pub fn new(device: DeviceId, category: Category, direction: Direction) -> Self {
        Self {
            device,
            category,
            direction,
        }
    }

    /// Parses `devices/{id}/{category}/{direction}`; anything else is `None`.
    pub fn parse(topic: &str) -> Option<Self> {
        let mut levels = topic.split('/');
        let (root, id, cat, dir) = (
            levels.next()?,
            levels.next()?,
            levels.next()?,
            levels.next()?,
        );
        if root != ROOT || levels.next().is_some() {
            return None;
        }
        let direction = match dir {
            "up" => Direction::Up,
            "down" => Direction::Down,
            _ => return None,
        };
        Some(Self {
            device: DeviceId::parse(id).ok()?,
            category: Category::parse(cat)?,
            direction,
        })
    }
}

impl fmt::Display for DeviceTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ROOT}/{}/{}/{}",
            self.device,
            self.category.as_str(),
            self.direction.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_category() {
        let id = DeviceId::parse("a4:cf:12:00:00:01").expect("valid");
        for c in Category::ALL {
            for d in [Direction::Up, Direction::Down] {
                let t = DeviceTopic::new(id.clone(), c, d);
                assert_eq!(DeviceTopic::parse(&t.to_string()), Some(t));
            }
        }
    }

    #[test]
    fn refuses_other_shapes() {
        for bad in [
            "devices/x/telemetry",
            "devices/x/telemetry/up/extra",
            "devices/x/unknown/up",
            "devices/x/telemetry/sideways",
            "other/x/telemetry/up",
            "devices/+/telemetry/up",
            "devices//telemetry/up",
        ] {
            assert_eq!(DeviceTopic::parse(bad), None, "{bad}");
        }
    }
}
