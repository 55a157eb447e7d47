//! The ring buffer's byte layout round-trips any content.

use proptest::prelude::*;
use rampart_core::ring::Ring;

use crate::strategies;

proptest! {
    #[test]
    fn any_ring_round_trips_through_its_bytes(
        pushes in prop::collection::vec(strategies::measurement(u8::MAX), 0..20),
        acks in 0usize..8,
    ) {
        let mut r = Ring::<8>::new();
        for p in pushes {
            r.push(p);
        }
        r.ack(acks);
        let mut buf = [0u8; Ring::<8>::BYTE_LEN];
        prop_assert_eq!(r.to_bytes(&mut buf), Ok(Ring::<8>::BYTE_LEN));
        prop_assert_eq!(Ring::<8>::from_bytes(&buf), Ok(r));
    }
}
