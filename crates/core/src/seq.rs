//! Sequence numbers strictly increasing across reboots.
//!
//! `seq = boot << 32 | counter`: a boot counter kept in persistent storage
//! (flash, NVS, a file) and a counter in RAM. At start the next boot number
//! is *stored before* the first `seq` of that boot is handed out, so a crash
//! at any moment can skip numbers but never repeat one. If the storage
//! fails, no `seq` is handed out (a repeat would be a sequence conflict at
//! the server; a gap is harmless). When the counter of a boot runs out, the
//! generator moves on to the next boot number the same way.
//!
//! The server accepts `seq` up to 2⁶³−1 (`docs/payloads.md`), so the boot
//! number stays below 2³¹: two billion boots, decades even for a device
//! that wakes from deep sleep every few seconds.
//!
//! Wiping the storage restarts the boot counter; the device's readings
//! would then conflict with stored ones, so a factory reset must also
//! re-enroll the device under a new identity.

use core::fmt;

use crate::measurement::MAX_WIRE_INT;

/// The largest boot number (so that `seq` stays at most 2⁶³−1).
pub const MAX_BOOT: u32 = (MAX_WIRE_INT >> 32) as u32;

/// Persistent storage of the boot counter.
pub trait BootCounterStore {
    /// The storage's error.
    type Error;
    /// The last stored boot number, `None` if never stored (first boot).
    fn load(&mut self) -> Result<Option<u32>, Self::Error>;
    /// Durably stores `boot` (returns only once it would survive a power loss).
    fn store(&mut self, boot: u32) -> Result<(), Self::Error>;
}

/// Why no sequence number was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqError<E> {
    /// The boot counter could not be loaded or stored; try again later.
    Storage(E),
    /// All 2³¹ boot numbers are used up (or storage holds a number beyond
    /// the last); the device needs a new identity.
    Exhausted,
}

impl<E: fmt::Display> fmt::Display for SeqError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeqError::Storage(e) => write!(
                f,
                "the boot counter could not be read or stored ({e}); no sequence number is handed out until it can"
            ),
            SeqError::Exhausted => f.write_str(
                "sequence numbers are exhausted (boot counter at its limit); re-enroll the device under a new id",
            ),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for SeqError<E> {}

/// Hands out strictly increasing sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqGen {
    boot: u32,
    /// Next counter value; 2³² means this boot's numbers are used up.
    next: u64,
}

const COUNTER_END: u64 = 1 << 32;

impl SeqGen {
    /// Starts a boot: loads the last boot number, stores the next one, and
    /// only then returns a generator.
    pub fn start<S: BootCounterStore>(store: &mut S) -> Result<Self, SeqError<S::Error>> {
        let boot = match store.load().map_err(SeqError::Storage)? {
            None => 0,
            Some(last) if last >= MAX_BOOT => return Err(SeqError::Exhausted),
            Some(last) => last.saturating_add(1),
        };
        store.store(boot).map_err(SeqError::Storage)?;
        Ok(Self { boot, next: 0 })
    }

    /// This boot's number.
    pub fn boot(&self) -> u32 {
        self.boot
    }

    /// The next sequence number. When this boot's counter is used up, the
    /// next boot number is stored first; on a storage error nothing changes
    /// and the call can be retried.
    pub fn next<S: BootCounterStore>(&mut self, store: &mut S) -> Result<u64, SeqError<S::Error>> {
        if self.next >= COUNTER_END {
            if self.boot >= MAX_BOOT {
                return Err(SeqError::Exhausted);
            }
            let boot = self.boot.saturating_add(1);
            store.store(boot).map_err(SeqError::Storage)?;
            self.boot = boot;
            self.next = 0;
        }
        let seq = (u64::from(self.boot) << 32) | self.next;
        self.next = self.next.saturating_add(1);
        Ok(seq)
    }

    /// A generator positioned at `boot` and `counter`, bypassing storage
    /// (tests that need to reach the end of a boot quickly).
    #[cfg(test)]
    pub(crate) fn at(boot: u32, counter: u32) -> Self {
        Self {
            boot: boot.min(MAX_BOOT),
            next: u64::from(counter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// Storage in memory with injectable failures.
    #[derive(Debug, Default)]
    struct Flash {
        boot: Option<u32>,
        fail_load: bool,
        fail_store: bool,
        stores: Vec<u32>,
    }

    impl BootCounterStore for Flash {
        type Error = &'static str;
        fn load(&mut self) -> Result<Option<u32>, &'static str> {
            if self.fail_load {
                Err("read failed")
            } else {
                Ok(self.boot)
            }
        }
        fn store(&mut self, boot: u32) -> Result<(), &'static str> {
            if self.fail_store {
                return Err("write failed");
            }
            self.boot = Some(boot);
            self.stores.push(boot);
            Ok(())
        }
    }

    #[test]
    fn first_boot_starts_at_zero_and_stores_before_handing_out() {
        let mut flash = Flash::default();
        let mut g = SeqGen::start(&mut flash).expect("starts");
        assert_eq!(flash.stores, [0]);
        assert_eq!(g.next(&mut flash), Ok(0));
        assert_eq!(g.next(&mut flash), Ok(1));
    }

    #[test]
    fn a_reboot_continues_above_every_earlier_seq() {
        let mut flash = Flash::default();
        let mut g = SeqGen::start(&mut flash).expect("boot 0");
        let mut last = 0;
        for _ in 0..5 {
            last = g.next(&mut flash).expect("seq");
        }
        // Reboot: RAM is gone, only the flash remains.
        let mut g = SeqGen::start(&mut flash).expect("boot 1");
        assert_eq!(g.boot(), 1);
        let first = g.next(&mut flash).expect("seq");
        assert!(first > last);
        assert_eq!(first, 1 << 32);
    }

    #[test]
    fn storage_failure_means_no_seq() {
        let mut flash = Flash {
            fail_load: true,
            ..Flash::default()
        };
        assert_eq!(
            SeqGen::start(&mut flash),
            Err(SeqError::Storage("read failed"))
        );
        flash.fail_load = false;
        flash.boot = Some(3);
        flash.fail_store = true;
        assert_eq!(
            SeqGen::start(&mut flash),
            Err(SeqError::Storage("write failed"))
        );
        // Nothing was stored, so the next successful start still moves past 3.
        flash.fail_store = false;
        let mut g = SeqGen::start(&mut flash).expect("boot 4");
        assert_eq!(g.next(&mut flash), Ok(4 << 32));
    }

    #[test]
    fn counter_overflow_moves_to_the_next_boot_after_storing_it() {
        let mut flash = Flash {
            boot: Some(7),
            ..Flash::default()
        };
        let mut g = SeqGen::at(7, u32::MAX);
        assert_eq!(g.next(&mut flash), Ok((7 << 32) | u64::from(u32::MAX)));
        flash.fail_store = true;
        assert_eq!(g.next(&mut flash), Err(SeqError::Storage("write failed")));
        assert_eq!(g.next(&mut flash), Err(SeqError::Storage("write failed")));
        flash.fail_store = false;
        assert_eq!(g.next(&mut flash), Ok(8 << 32));
        assert_eq!(flash.boot, Some(8));
        // A reboot now starts at boot 9: nothing from boot 8 repeats.
        let mut g = SeqGen::start(&mut flash).expect("boot 9");
        assert_eq!(g.next(&mut flash), Ok(9 << 32));
    }

    #[test]
    fn the_last_boot_ends_in_exhaustion_not_in_an_invalid_seq() {
        let mut flash = Flash {
            boot: Some(MAX_BOOT - 1),
            ..Flash::default()
        };
        let mut g = SeqGen::start(&mut flash).expect("last boot");
        assert_eq!(g.boot(), MAX_BOOT);
        assert_eq!(g.next(&mut flash), Ok(u64::from(MAX_BOOT) << 32));
        let mut g = SeqGen::at(MAX_BOOT, u32::MAX);
        assert_eq!(g.next(&mut flash), Ok(MAX_WIRE_INT));
        assert_eq!(g.next(&mut flash), Err(SeqError::Exhausted));
        assert_eq!(SeqGen::start(&mut flash), Err(SeqError::Exhausted));
        flash.boot = Some(u32::MAX);
        assert_eq!(SeqGen::start(&mut flash), Err(SeqError::Exhausted));
    }

    proptest! {
        #[test]
        fn strictly_increasing_through_reboots_and_failures(
            steps in prop::collection::vec((0u8..4, 1usize..5), 1..40),
            start_counter in prop::option::of(u32::MAX - 8..=u32::MAX),
        ) {
            let mut flash = Flash::default();
            let mut g = SeqGen::start(&mut flash).expect("start");
            if let Some(c) = start_counter {
                g = SeqGen::at(g.boot(), c);
            }
            let mut last: Option<u64> = None;
            for (what, n) in steps {
                match what {
                    0 => if let Ok(ng) = SeqGen::start(&mut flash) { g = ng },
                    1 => flash.fail_store = !flash.fail_store,
                    _ => for _ in 0..n {
                        if let Ok(s) = g.next(&mut flash) {
                            prop_assert!(s <= MAX_WIRE_INT);
                            if let Some(l) = last { prop_assert!(s > l, "{} after {}", s, l); }
                            last = Some(s);
                        }
                    },
                }
            }
        }
    }
}
