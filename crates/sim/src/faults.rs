//! Update faults (`--ota-fault KIND:SHARE`): which devices of the fleet
//! misbehave during an update, so that rollouts can be tested with
//! realistic failure rates.
//!
//! Exactly `round(SHARE × devices)` devices get each kind. The choice is a
//! stable hash of the device id and the kind (FNV-1a, the same in every run
//! and on every machine), and the kinds are disjoint: kinds are assigned in
//! a fixed order ([`FaultKind::ALL`]), each from the devices no earlier kind
//! took. Pure functions; the fleet prints the result at start.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// How a faulty device misbehaves during an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A byte of the downloaded image is flipped: the hash check fails and
    /// the device reports `failed` (`hash-mismatch`).
    CorruptDownload,
    /// Every trial boot of a new image crashes before the application
    /// runs: the boot loop ends in a rollback (`crash-loop`).
    CrashOnBoot,
    /// The trial image hangs and never connects: rolled back at the
    /// confirmation deadline (`not-confirmed`).
    Hang,
    /// The trial image runs but cannot reach the network: rolled back at
    /// the confirmation deadline (`not-confirmed`).
    NoNetwork,
}

impl FaultKind {
    /// Every kind, in the order devices are assigned.
    pub const ALL: [FaultKind; 4] = [
        FaultKind::CorruptDownload,
        FaultKind::CrashOnBoot,
        FaultKind::Hang,
        FaultKind::NoNetwork,
    ];

    /// The flag's name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::CorruptDownload => "corrupt-download",
            FaultKind::CrashOnBoot => "crash-on-boot",
            FaultKind::Hang => "hang",
            FaultKind::NoNetwork => "no-network",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown update fault '{s}'; one of corrupt-download, crash-on-boot, hang, no-network"
                )
            })
    }
}

/// One `--ota-fault KIND:SHARE`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultShare {
    /// The fault.
    pub kind: FaultKind,
    /// The fraction of the fleet that has it (0 to 1).
    pub share: f64,
}

impl FromStr for FaultShare {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, share) = s.split_once(':').ok_or_else(|| {
            format!("--ota-fault '{s}' is not KIND:SHARE, e.g. crash-on-boot:0.05")
        })?;
        let kind = kind.trim().parse()?;
        let share: f64 = share
            .trim()
            .parse()
            .map_err(|_| format!("--ota-fault '{s}': the share is not a number such as 0.05"))?;
        if !(share.is_finite() && (0.0..=1.0).contains(&share)) {
            return Err(format!(
                "--ota-fault '{s}': the share must be between 0 and 1"
            ));
        }
        Ok(FaultShare { kind, share })
    }
}

/// How many devices of a fleet of `devices` get each kind, in assignment
/// order; refuses a kind given twice and shares that add up to more
/// devices than the fleet has.
pub fn counts(faults: &[FaultShare], devices: usize) -> Result<Vec<(FaultKind, usize)>, String> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for kind in FaultKind::ALL {
        let mut given = faults.iter().filter(|f| f.kind == kind);
        let Some(fault) = given.next() else {
            continue;
        };
        if given.next().is_some() {
            return Err(format!("--ota-fault {kind} is given more than once"));
        }
        if !(fault.share.is_finite() && (0.0..=1.0).contains(&fault.share)) {
            return Err(format!(
                "--ota-fault {kind}:{} must have a share between 0 and 1",
                fault.share
            ));
        }
        // In [0, devices]: the share is at most 1.
        let n = (fault.share * devices as f64).round() as usize;
        total = total.saturating_add(n);
        out.push((kind, n));
    }
    if total > devices {
        return Err(format!(
            "--ota-fault shares add up to {total} faulty devices, more than the {devices} of the fleet \
             (each device has at most one fault)"
        ));
    }
    Ok(out)
}

/// The stable rank of a device for a kind (FNV-1a of `kind \0 id`).
fn rank(kind: FaultKind, id: &str) -> u64 {
    kind.as_str()
        .bytes()
        .chain(std::iter::once(0))
        .chain(id.bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// Which device gets which fault: exactly the [`counts`] per kind,
/// disjoint, the same for the same ids and faults in every run.
pub fn assign(ids: &[&str], faults: &[FaultShare]) -> Result<BTreeMap<String, FaultKind>, String> {
    let mut out = BTreeMap::new();
    for (kind, n) in counts(faults, ids.len())? {
        let mut free: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !out.contains_key(*id))
            .collect();
        // Ties (a hash collision) are broken by the id, so the order is total.
        free.sort_by_key(|id| (rank(kind, id), *id));
        for id in free.into_iter().take(n) {
            out.insert(id.to_owned(), kind);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("sim-abc-{i:04}")).collect()
    }

    fn share(s: &str) -> FaultShare {
        s.parse().expect("fault")
    }

    #[test]
    fn flags_parse_and_bad_ones_say_why() {
        assert_eq!(
            share("crash-on-boot:0.05"),
            FaultShare {
                kind: FaultKind::CrashOnBoot,
                share: 0.05
            }
        );
        for kind in FaultKind::ALL {
            assert_eq!(kind.as_str().parse::<FaultKind>(), Ok(kind));
        }
        assert!(
            "melt:0.1"
                .parse::<FaultShare>()
                .expect_err("kind")
                .contains("no-network")
        );
        assert!(
            "hang"
                .parse::<FaultShare>()
                .expect_err("form")
                .contains("KIND:SHARE")
        );
        assert!("hang:lots".parse::<FaultShare>().is_err());
        assert!("hang:1.5".parse::<FaultShare>().is_err());
        assert!("hang:-0.1".parse::<FaultShare>().is_err());
        assert!(counts(&[share("hang:0.1"), share("hang:0.2")], 10).is_err());
    }

    #[test]
    fn exact_counts_disjoint_and_stable() {
        let ids = ids(100);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let faults = [
            share("no-network:0.1"),
            share("crash-on-boot:0.05"),
            share("hang:0.024"),
            share("corrupt-download:0.5"),
        ];
        let a = assign(&refs, &faults).expect("assign");
        let count = |k| a.values().filter(|v| **v == k).count();
        assert_eq!(count(FaultKind::CrashOnBoot), 5);
        assert_eq!(count(FaultKind::NoNetwork), 10);
        assert_eq!(count(FaultKind::Hang), 2, "round(2.4)");
        assert_eq!(count(FaultKind::CorruptDownload), 50);
        // One fault per device (a map), and the same in another run and
        // whatever order the flags came in.
        assert_eq!(a.len(), 67);
        let mut reversed = faults;
        reversed.reverse();
        assert_eq!(assign(&refs, &reversed).expect("again"), a);
        // The choice depends on the id: another fleet gets other devices.
        let other: Vec<String> = (1..=100).map(|i| format!("sim-def-{i:04}")).collect();
        let other_refs: Vec<&str> = other.iter().map(String::as_str).collect();
        let b = assign(&other_refs, &[share("crash-on-boot:0.05")]).expect("other");
        let suffixes = |m: &BTreeMap<String, FaultKind>, k| -> Vec<String> {
            m.iter()
                .filter(|(_, v)| **v == k)
                .map(|(id, _)| id[8..].to_owned())
                .collect()
        };
        assert_ne!(
            suffixes(&a, FaultKind::CrashOnBoot),
            suffixes(&b, FaultKind::CrashOnBoot)
        );
        // Too many faulty devices for the fleet.
        assert!(
            assign(&refs, &[share("hang:0.6"), share("no-network:0.5")])
                .expect_err("too many")
                .contains("more than the 100")
        );
        assert!(assign(&refs, &[]).expect("none").is_empty());
    }

    #[test]
    fn shares_that_round_up_past_a_small_fleet_are_refused() {
        // Shares that each round up can outnumber a small fleet: refused.
        let three = ids(3);
        let three_refs: Vec<&str> = three.iter().map(String::as_str).collect();
        let quarterish: Vec<FaultShare> = FaultKind::ALL
            .iter()
            .map(|k| FaultShare {
                kind: *k,
                share: 0.2,
            })
            .collect();
        assert!(
            assign(&three_refs, &quarterish)
                .expect_err("four of three")
                .contains("4 faulty devices, more than the 3")
        );
    }

    proptest! {
        #[test]
        fn counts_are_exact_for_any_fleet(
            n in 1usize..300,
            shares in proptest::collection::vec(0.0f64..0.25, 4),
        ) {
            let ids = ids(n);
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let faults: Vec<FaultShare> = FaultKind::ALL
                .iter()
                .zip(&shares)
                .map(|(k, s)| FaultShare { kind: *k, share: *s })
                .collect();
            let expected: Vec<usize> = faults
                .iter()
                .map(|f| (f.share * n as f64).round() as usize)
                .collect();
            // Four shares under a quarter each can still round to more
            // devices than a small fleet has (0.2 of 3 is 1, four times):
            // then the fleet is refused, never silently shortchanged.
            if expected.iter().sum::<usize>() > n {
                let err = assign(&refs, &faults).expect_err("more faulty devices than the fleet");
                prop_assert!(err.contains(&format!("more than the {n}")), "{}", err);
                return Ok(());
            }
            let a = assign(&refs, &faults).expect("at most all devices");
            for (f, expected) in faults.iter().zip(&expected) {
                prop_assert_eq!(a.values().filter(|k| **k == f.kind).count(), *expected);
            }
            prop_assert!(a.keys().all(|id| ids.contains(id)));
        }
    }
}
