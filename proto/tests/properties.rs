//! Property tests of the VLP codec and sealed frames.
#![allow(clippy::unwrap_used)] // tests may unwrap

use proptest::prelude::*;
use varta_proto::{
    FRAME_LEN, Frame, FrameCipher, Iv, Key, MASTER_FRAME_LEN, MasterKey, NONCE_TERMINAL, SHARED_FRAME_LEN,
    Status, master_frame_pid,
};

/// Every frame `decode` accepts.
fn valid_frame() -> impl Strategy<Value = Frame> {
    (
        prop_oneof![Just(Status::Ok), Just(Status::Degraded), Just(Status::Critical)],
        2u32..,
        prop_oneof![Just(0u64), Just(u64::MAX - 1), 0..u64::MAX],
        prop_oneof![Just(1u64), Just(0), Just(u64::MAX - 1), Just(NONCE_TERMINAL), any::<u64>()],
        any::<u32>(),
    )
        .prop_map(|(status, pid, timestamp, nonce, payload)| {
            // The terminal nonce is only valid with Critical.
            let status = if nonce == NONCE_TERMINAL { Status::Critical } else { status };
            Frame::new(status, pid, timestamp, nonce, payload)
        })
}

fn iv() -> impl Strategy<Value = Iv> {
    (any::<[u8; 8]>(), any::<u32>()).prop_map(|(random, counter)| Iv { random, counter })
}

/// Arbitrary bytes, biased towards the three interesting lengths.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        prop::collection::vec(any::<u8>(), FRAME_LEN),
        prop::collection::vec(any::<u8>(), SHARED_FRAME_LEN),
        prop::collection::vec(any::<u8>(), MASTER_FRAME_LEN),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn decode_inverts_encode(f in valid_frame()) {
        prop_assert_eq!(Frame::decode(&f.encode()), Ok(f));
    }

    #[test]
    fn accepted_bytes_reencode_to_themselves(bytes in prop::collection::vec(any::<u8>(), FRAME_LEN)) {
        if let Ok(f) = Frame::decode(&bytes) {
            let again = f.encode();
            prop_assert_eq!(again.as_slice(), bytes.as_slice());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in datagram(), key in any::<[u8; 32]>()) {
        let cipher = FrameCipher::new(&Key::from_bytes(key));
        let _ = Frame::decode(&bytes);
        let _ = cipher.open_shared(&bytes);
        let _ = cipher.open_master(&bytes);
        let _ = master_frame_pid(&bytes);
    }

    #[test]
    fn a_single_bit_flip_is_always_an_error(f in valid_frame(), bit in 0usize..FRAME_LEN * 8) {
        let mut wire = f.encode();
        wire[bit / 8] ^= 1 << (bit % 8);
        // CRC-32C detects every single-bit error: never a different valid frame.
        prop_assert!(Frame::decode(&wire).is_err(), "bit {} of {:?} gave {:?}", bit, f, Frame::decode(&wire));
    }

    #[test]
    fn sealed_shared_frames_round_trip_and_resist_bit_flips(
        f in valid_frame(), key in any::<[u8; 32]>(), iv in iv(), bit in 0usize..SHARED_FRAME_LEN * 8,
    ) {
        let cipher = FrameCipher::new(&Key::from_bytes(key));
        let mut wire = cipher.seal_shared(iv, &f.encode());
        prop_assert_eq!(cipher.open_shared(&wire), Ok((iv, f)));
        wire[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(cipher.open_shared(&wire).is_err());
    }

    #[test]
    fn sealed_master_frames_round_trip_and_resist_bit_flips(
        f in valid_frame(), key in any::<[u8; 32]>(), iv in iv(), bit in 0usize..MASTER_FRAME_LEN * 8,
    ) {
        let agent = FrameCipher::new(&MasterKey::new(Key::from_bytes(key)).agent_key(f.pid));
        let mut wire = agent.seal_master(f.pid, iv, &f.encode());
        prop_assert_eq!(master_frame_pid(&wire), Ok(f.pid));
        prop_assert_eq!(agent.open_master(&wire), Ok((iv, f)));
        wire[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(agent.open_master(&wire).is_err());
    }
}
