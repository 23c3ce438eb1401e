//! What a socket is, from the target's own network namespace tables
//! (`/proc/<pid>/net/{tcp,tcp6,udp,udp6,unix}`), found by the socket's
//! inode: protocol, local and remote address and TCP state, or a Unix
//! socket's bound path — so "waits on socket:[8812]" says to whom. Plain
//! reads with no stop, each table cut at [`TABLE_BYTES`] (a busy host lists
//! many sockets; one not found is simply not described), loaded at most
//! once per capture and only when a waited-on fd is a socket.

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Each table is read at most this far (~1,750 TCP sockets): the kernel
/// builds the text as it is read, measured here at 2.5 ms per 256 KiB
/// (10 ms per MiB), and the zero-stop capture should stay a few ms.
const TABLE_BYTES: u64 = 256 * 1024;

/// Socket descriptions by inode, for one process's network namespace.
pub(crate) struct Sockets {
    pid: u32,
    by_inode: Option<HashMap<u64, String>>,
}

impl Sockets {
    pub(crate) fn new(pid: u32) -> Sockets {
        Sockets { pid, by_inode: None }
    }

    /// `tcp 127.0.0.1:41234 -> 127.0.0.1:5432 established`, `udp
    /// 0.0.0.0:5353`, `unix /run/app.sock`… for the socket with `inode`.
    pub(crate) fn describe(&mut self, inode: u64) -> Option<&str> {
        let pid = self.pid;
        self.by_inode.get_or_insert_with(|| load(pid)).get(&inode).map(String::as_str)
    }
}

fn load(pid: u32) -> HashMap<u64, String> {
    let mut by_inode = HashMap::new();
    for (file, proto) in [("tcp", "tcp"), ("tcp6", "tcp"), ("udp", "udp"), ("udp6", "udp")] {
        for line in table(pid, file).lines().skip(1) {
            if let Some((inode, what)) = inet(line, proto) {
                by_inode.insert(inode, what);
            }
        }
    }
    for line in table(pid, "unix").lines().skip(1) {
        if let Some((inode, what)) = unix(line) {
            by_inode.insert(inode, what);
        }
    }
    by_inode
}

fn table(pid: u32, file: &str) -> String {
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(format!("/proc/{pid}/net/{file}")) {
        // A cut table ends mid-line; that last line fails to parse.
        let _ = f.take(TABLE_BYTES).read_to_string(&mut text);
    }
    text
}

/// One line of `net/tcp{,6}` or `net/udp{,6}`:
/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode …`.
fn inet(line: &str, proto: &str) -> Option<(u64, String)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (local, remote) = (endpoint(f.get(1)?)?, endpoint(f.get(2)?)?);
    let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
    let inode: u64 = f.get(9)?.parse().ok()?;
    if inode == 0 {
        return None;
    }
    let what = match (proto, state) {
        ("tcp", 0x0A) => format!("tcp {local} listening"),
        ("tcp", s) => format!("tcp {local} -> {remote} {}", tcp_state(s)),
        // UDP: 01 connected, 07 not.
        (_, 0x01) => format!("{proto} {local} -> {remote}"),
        _ => format!("{proto} {local}"),
    };
    Some((inode, what))
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6): the address is
/// printed as the kernel's 32-bit words in host order, the port as a number.
fn endpoint(hex: &str) -> Option<String> {
    let (addr, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| Some(u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?.to_ne_bytes());
    match addr.len() {
        8 => Some(format!("{}:{port}", Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(format!("[{}]:{port}", Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

fn tcp_state(s: u8) -> &'static str {
    match s {
        0x01 => "established",
        0x02 => "syn-sent",
        0x03 => "syn-received",
        0x04 => "fin-wait-1",
        0x05 => "fin-wait-2",
        0x06 => "time-wait",
        0x07 => "closed",
        0x08 => "close-wait",
        0x09 => "last-ack",
        0x0B => "closing",
        _ => "state ?",
    }
}

/// One line of `net/unix`: `Num RefCount Protocol Flags Type St Inode
/// [Path]` (an abstract name starts with `@`; a path may hold spaces).
fn unix(line: &str) -> Option<(u64, String)> {
    let mut rest = line.trim_start();
    let mut field = "";
    for _ in 0..7 {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        (field, rest) = (&rest[..end], rest[end..].trim_start());
    }
    let inode: u64 = field.parse().ok()?;
    let what = if rest.is_empty() { "unix, unnamed".to_owned() } else { format!("unix {rest}") };
    Some((inode, what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn inode_of(fd: &impl AsRawFd) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("readlink");
        let link = link.to_str().expect("utf-8");
        link.strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .expect("a socket")
            .parse()
            .expect("inode")
    }

    #[test]
    fn lines_of_the_kernel_tables_parse() {
        let tcp = "   0: 0100007F:1F90 0100007F:A0B2 01 00000000:00000000 00:00000000 00000000     0        0 4711 1 0 20 4 30 10 -1";
        assert_eq!(
            inet(tcp, "tcp"),
            Some((4711, "tcp 127.0.0.1:8080 -> 127.0.0.1:41138 established".to_owned()))
        );
        let v6 = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1";
        assert_eq!(inet(v6, "tcp"), Some((99, "tcp [::1]:80 listening".to_owned())));
        assert_eq!(inet("garbage", "tcp"), None);
        let unix_line = "0000000000000000: 00000002 00000000 00010000 0001 01 555 /run/app.sock";
        assert_eq!(unix(unix_line), Some((555, "unix /run/app.sock".to_owned())));
        assert_eq!(
            unix("0000000000000000: 00000002 00000000 00000000 0002 01 556"),
            Some((556, "unix, unnamed".to_owned()))
        );
        let spaced = "0000000000000000: 00000002 00000000 00010000 0001 01 557 /run/my app.sock";
        assert_eq!(unix(spaced), Some((557, "unix /run/my app.sock".to_owned())));
        assert_eq!(unix("0000000000000000: 00000002"), None);
    }

    #[test]
    fn our_own_sockets_are_described_from_our_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(server).expect("connect");
        let mine = client.local_addr().expect("addr");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        udp.connect(server).expect("connect udp");
        let udp_addr = udp.local_addr().expect("addr");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let unix = std::os::unix::net::UnixDatagram::bind(&path).expect("bind unix");

        let mut sockets = Sockets::new(std::process::id());
        assert_eq!(sockets.describe(inode_of(&listener)), Some(format!("tcp {server} listening").as_str()));
        assert_eq!(
            sockets.describe(inode_of(&client)),
            Some(format!("tcp {mine} -> {server} established").as_str())
        );
        assert_eq!(sockets.describe(inode_of(&udp)), Some(format!("udp {udp_addr} -> {server}").as_str()));
        assert_eq!(sockets.describe(inode_of(&unix)), Some(format!("unix {}", path.display()).as_str()));
        assert_eq!(sockets.describe(1), None);
    }
}
