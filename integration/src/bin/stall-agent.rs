//! A test agent that beats a few times over UDS and then stalls in a chosen
//! way, so stall diagnosis can be tested against real processes:
//!
//!     stall-agent SOCKET MODE [BEATS]
//!
//! MODE: `spin` (the beating thread burns a core), `lock` (it blocks on a
//! mutex another thread holds forever), `io` (it sits in uninterruptible
//! sleep: a `clone(CLONE_VFORK)` parent waits in D state until its child —
//! which only pauses — exits), `sleep` (it sleeps; for SIGSTOP / SIGKILL tests).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use varta_client::Client;
use varta_proto::Status;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(socket), Some(mode)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: stall-agent SOCKET spin|lock|io|sleep [BEATS]");
        std::process::exit(2);
    };
    let beats: u32 = args.get(3).and_then(|b| b.parse().ok()).unwrap_or(5);
    let client = match Client::connect_uds(socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stall-agent: {e}");
            std::process::exit(1);
        }
    };
    for _ in 0..beats {
        let _ = client.beat(Status::Ok, 0);
        std::thread::sleep(Duration::from_millis(20));
    }
    match mode.as_str() {
        "spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "lock" => {
            let lock = Arc::new(Mutex::new(()));
            let holder = Arc::clone(&lock);
            let (held_tx, held_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _guard = holder.lock();
                let _ = held_tx.send(());
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            });
            let _ = held_rx.recv();
            let _never = lock.lock();
            unreachable_park()
        }
        "io" => {
            // clone(CLONE_VFORK): the parent waits in the kernel, in D
            // state, until the child execs or exits — and the child, on its
            // own stack, only pauses.
            let mut stack = vec![0u8; 64 * 1024];
            // SAFETY: the stack outlives the child (the parent is blocked
            // until the child exits, and never returns from here); the child
            // runs `pause_forever`, which touches nothing of ours.
            unsafe {
                let top = stack.as_mut_ptr().add(stack.len()).cast::<libc::c_void>();
                libc::clone(pause_forever, top, libc::CLONE_VFORK | libc::SIGCHLD, std::ptr::null_mut());
            }
            unreachable_park()
        }
        "sleep" => unreachable_park(),
        other => {
            eprintln!("stall-agent: unknown mode {other}");
            std::process::exit(2);
        }
    }
}

extern "C" fn pause_forever(_: *mut libc::c_void) -> libc::c_int {
    // Dies with the agent: a test kills the agent, and this child would
    // otherwise pause on as an orphan after every run.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

fn unreachable_park() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
