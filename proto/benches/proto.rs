//! Micro-benchmarks of the per-frame protocol work: CRC, decode, secure open.
//! Run: `cargo bench -p varta-proto --bench proto`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use varta_proto::secure::FrameCipher;
use varta_proto::{Frame, Iv, Key, MasterKey, Status, crc::crc32c, open_shared_any};

fn benches(c: &mut Criterion) {
    let frame = Frame::new(Status::Ok, 4242, 123_456_789, 77, 9).encode();
    c.bench_function("crc32c/28B", |b| b.iter(|| crc32c(black_box(&frame[..28]))));
    c.bench_function("frame/decode", |b| b.iter(|| Frame::decode(black_box(&frame))));
    c.bench_function("frame/encode", |b| {
        let f = Frame::new(Status::Ok, 4242, 123_456_789, 77, 9);
        b.iter(|| black_box(&f).encode())
    });

    let iv = Iv { random: [7; 8], counter: 3 };
    let shared = FrameCipher::new(&Key::from_bytes([5; 32]));
    let wire = shared.seal_shared(iv, &frame);
    c.bench_function("secure/open_shared", |b| b.iter(|| shared.open_shared(black_box(&wire))));
    c.bench_function("secure/seal_shared", |b| b.iter(|| shared.seal_shared(iv, black_box(&frame))));
    let three =
        [FrameCipher::new(&Key::from_bytes([1; 32])), FrameCipher::new(&Key::from_bytes([2; 32])), shared];
    c.bench_function("secure/open_shared_any_of_3", |b| b.iter(|| open_shared_any(&three, black_box(&wire))));

    let master = MasterKey::new(Key::from_bytes([6; 32]));
    let agent = FrameCipher::new(&master.agent_key(4242));
    let mwire = agent.seal_master(4242, iv, &frame);
    c.bench_function("secure/open_master", |b| b.iter(|| agent.open_master(black_box(&mwire))));
    c.bench_function("secure/derive_agent_key", |b| b.iter(|| master.agent_key(black_box(4242))));
}

criterion_group!(proto, benches);
criterion_main!(proto);
