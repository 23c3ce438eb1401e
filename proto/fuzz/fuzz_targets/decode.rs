//! Feeds arbitrary datagrams to every frame parser: none may panic, and
//! whatever decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use varta_proto::{Frame, FrameCipher, Key, MasterKey, master_frame_pid};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        assert_eq!(&frame.encode()[..], data, "decode accepted bytes encode does not produce");
    }
    let shared = FrameCipher::new(&Key::from_bytes([0x5a; 32]));
    let _ = shared.open_shared(data);
    if let Ok(pid) = master_frame_pid(data) {
        let agent = FrameCipher::new(&MasterKey::new(Key::from_bytes([0xa5; 32])).agent_key(pid));
        let _ = agent.open_master(data);
    }
    let _ = shared.open_master(data);
});
