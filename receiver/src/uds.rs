//! Unix datagram transport: the strongest one. Every datagram carries the
//! sender's kernel credentials (SO_PASSCRED → SCM_CREDENTIALS), so a frame is
//! accepted only when the kernel says it came from the pid it claims.
//!
//! Checks per datagram, first failure wins: truncated → decode (`Decode(kind)`;
//! with `allow_cross_namespace`, a pid-1 frame from a sender the kernel
//! shows to be pid 1 of a nested pid namespace is accepted — an extension
//! of the spec, which refuses pid 1 because on a host it is init)
//! → frame pid above `pid_max` (read once at bind) → no credentials
//! (`AuthFailed`) → sender uid not allowed (`UidMismatch`) → frame pid ≠
//! sender pid: a sender in a child pid namespace whose innermost pid equals the
//! frame pid is `NamespaceMismatch` unless `allow_cross_namespace` (then
//! accepted with `host_pid` = the kernel's pid), anything else `AuthFailed`.
//! The namespace check reads `/proc/<pid>/status` of the sender, so a
//! sender that already exited when its datagram is classified cannot be
//! attributed and counts as `AuthFailed` (failing closed).
//!
//! Socket file lifecycle: `bind` refuses a path whose directory is missing or
//! which is a non-socket file (never deleted); a socket file that answers a
//! connect belongs to a live receiver (error); one that refuses is stale and
//! is removed. The socket is chmod-ed to `socket_mode` right after bind, and
//! unlinked on drop if the path still holds our inode. A socket systemd
//! passed for the path (socket activation, see [`crate::activation`]) is
//! taken instead: never bound, chmod-ed or unlinked by us, and given back
//! when the receiver is dropped (a reload may take it again).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use varta_proto::{Arrival, Beat, DecodeError, DecodeErrorKind, Frame, PidRule, Refusal, Source, Transport};

use crate::config::VlpReceiverConfig;
use crate::error::ReceiverError;
use crate::mmsg::{self, Datagram};
use crate::refused;
use varta_pipeline::procfs;

/// `PID_MAX_LIMIT` on 64-bit Linux, used when `/proc/sys/kernel/pid_max` is unreadable.
const PID_MAX_LIMIT: u32 = 4_194_304;

#[derive(Debug)]
pub(crate) struct UdsReceiver {
    socket: UnixDatagram,
    path: PathBuf,
    /// (device, inode) of the socket file we created.
    inode: (u64, u64),
    allowed_uids: Vec<u32>,
    allow_cross_namespace: bool,
    pid_max: u32,
    pub(crate) granted: u64,
    mode: u32,
    /// Passed by systemd, or kept in its file-descriptor store: given
    /// back, never unlinked, on drop.
    activated: bool,
}

impl UdsReceiver {
    pub(crate) fn bind(id: &str, cfg: &VlpReceiverConfig) -> Result<UdsReceiver, ReceiverError> {
        let io_err = |what: String| move |source| ReceiverError::Io { id: id.to_owned(), what, source };
        let path = cfg.path.clone().unwrap_or_default();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(ReceiverError::MissingDirectory { id: id.to_owned(), dir });
        }
        if let Some(socket) = crate::activation::take(&path) {
            return Self::activated(id, cfg, path, socket);
        }
        clear_stale(id, &path)?;
        let socket = UnixDatagram::bind(&path).map_err(io_err(format!("bind {}", path.display())))?;
        let mode = cfg.mode();
        let meta = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .and_then(|()| std::fs::symlink_metadata(&path));
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(io_err(format!("chmod {:o} {}", mode, path.display()))(e));
            }
        };
        let mut me = UdsReceiver {
            socket,
            path,
            inode: (meta.dev(), meta.ino()),
            allowed_uids: cfg.allowed_uids.clone().unwrap_or_else(|| vec![varta_secrets::effective_uid()]),
            allow_cross_namespace: cfg.allow_cross_namespace.unwrap_or(false),
            pid_max: procfs::pid_max().unwrap_or(PID_MAX_LIMIT),
            granted: 0,
            mode,
            activated: false,
        };
        // From here on, dropping `me` unlinks the socket file on error.
        let fd = me.socket.as_raw_fd();
        mmsg::set_pass_credentials(fd).map_err(io_err("set SO_PASSCRED".into()))?;
        me.granted = mmsg::set_recv_buffer(fd, cfg.recv_buffer()).map_err(io_err("set SO_RCVBUF".into()))?;
        // Held by systemd from now on: like a passed socket, never unlinked.
        me.activated = crate::activation::store(&me.path, &me.socket);
        Ok(me)
    }

    /// A receiver on the socket systemd passed for `path`.
    fn activated(
        id: &str,
        cfg: &VlpReceiverConfig,
        path: PathBuf,
        socket: UnixDatagram,
    ) -> Result<UdsReceiver, ReceiverError> {
        let io_err = |what: String| move |source| ReceiverError::Io { id: id.to_owned(), what, source };
        let mode = std::fs::metadata(&path).map(|m| m.mode() & 0o7777).unwrap_or(0);
        let mut me = UdsReceiver {
            socket,
            path,
            inode: (0, 0),
            allowed_uids: cfg.allowed_uids.clone().unwrap_or_else(|| vec![varta_secrets::effective_uid()]),
            allow_cross_namespace: cfg.allow_cross_namespace.unwrap_or(false),
            pid_max: procfs::pid_max().unwrap_or(PID_MAX_LIMIT),
            granted: 0,
            mode,
            activated: true,
        };
        let fd = me.socket.as_raw_fd();
        mmsg::set_pass_credentials(fd).map_err(io_err("set SO_PASSCRED".into()))?;
        me.granted = mmsg::set_recv_buffer(fd, cfg.recv_buffer()).map_err(io_err("set SO_RCVBUF".into()))?;
        tracing::info!(receiver = id, path = %me.path.display(), "using the socket systemd passed (never bound or unlinked here)");
        Ok(me)
    }

    /// Whether the socket outlives this process (systemd passed it or
    /// holds it in its store).
    pub(crate) fn outlives_us(&self) -> bool {
        self.activated
    }

    /// The socket file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    pub(crate) fn describe(&self) -> String {
        format!("uds {} (mode {:04o}, rcvbuf {})", self.path.display(), self.mode, self.granted)
    }

    pub(crate) fn classify(&self, d: &Datagram<'_>, now: u64) -> Arrival {
        let refuse = |r: Refusal, pid: u32| refused(r, Transport::Uds, Source::Local, pid, now);
        if d.truncated() {
            return refuse(Refusal::Truncated, 0);
        }
        let frame = match Frame::decode(d.bytes) {
            Ok(f) => f,
            Err(DecodeError::BadPid(1)) if self.allow_cross_namespace => match namespace_init_frame(d) {
                Some(f) => f,
                None => return refuse(Refusal::Decode(DecodeErrorKind::BadPid), 0),
            },
            Err(e) => return refuse(Refusal::Decode(e.kind()), 0),
        };
        if frame.pid > self.pid_max {
            return refuse(Refusal::PidAboveMax, frame.pid);
        }
        let Some(cred) = d.credentials else {
            return refuse(Refusal::AuthFailed, frame.pid);
        };
        if !self.allowed_uids.contains(&cred.uid) {
            return refuse(Refusal::UidMismatch, frame.pid);
        }
        if frame.pid != cred.pid {
            if !in_child_namespace_as(cred.pid, frame.pid) {
                return refuse(Refusal::AuthFailed, frame.pid);
            }
            if !self.allow_cross_namespace {
                return refuse(Refusal::NamespaceMismatch, frame.pid);
            }
        }
        Arrival::Beat(Beat {
            frame,
            transport: Transport::Uds,
            source: Source::Local,
            host_pid: cred.pid,
            received_ns: now,
        })
    }
}

/// The frame of a sender that the kernel shows to be pid 1 of a nested pid
/// namespace (a containerised agent is often its namespace's init), decoded
/// with the [`PidRule::AllowNamespaceInit`] extension; `None` for anyone
/// else, whose pid-1 frame stays the spec's `BadPid`.
fn namespace_init_frame(d: &Datagram<'_>) -> Option<Frame> {
    let cred = d.credentials?;
    let bytes: &[u8; varta_proto::FRAME_LEN] = d.bytes.try_into().ok()?;
    let frame = Frame::decode_array_with(bytes, PidRule::AllowNamespaceInit).ok()?;
    (frame.pid == 1 && in_child_namespace_as(cred.pid, 1)).then_some(frame)
}

/// True when process `host_pid` lives in a nested pid namespace where its pid
/// is `inner_pid` (`NSpid` has several entries, the last one `inner_pid`).
fn in_child_namespace_as(host_pid: u32, inner_pid: u32) -> bool {
    host_pid != 0 && procfs::ns_pids(host_pid).is_some_and(|p| p.len() > 1 && p.last() == Some(&inner_pid))
}

/// Makes `path` free for bind: absent is fine; a stale socket is removed; a
/// live socket or any other kind of file is an error (and left alone).
fn clear_stale(id: &str, path: &Path) -> Result<(), ReceiverError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ReceiverError::Io {
                id: id.into(),
                what: format!("stat {}", path.display()),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ReceiverError::NotASocket { id: id.into(), path: path.into() });
    }
    let probe = UnixDatagram::unbound().map_err(|source| ReceiverError::Io {
        id: id.into(),
        what: "create probe socket".into(),
        source,
    })?;
    match probe.connect(path) {
        Ok(()) => Err(ReceiverError::SocketInUse { id: id.into(), path: path.into() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(receiver = id, path = %path.display(), "removing stale socket file");
            std::fs::remove_file(path).map_err(|source| ReceiverError::Io {
                id: id.into(),
                what: format!("remove stale socket {}", path.display()),
                source,
            })
        }
        Err(source) => Err(ReceiverError::Io {
            id: id.into(),
            what: format!("probe existing socket {}", path.display()),
            source,
        }),
    }
}

impl Drop for UdsReceiver {
    fn drop(&mut self) {
        if self.activated {
            // systemd's socket: back for the next receiver on this path.
            if let Ok(socket) = self.socket.try_clone() {
                crate::activation::give_back(self.path.clone(), socket);
            }
            return;
        }
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.inode);
        if !ours {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not unlink socket file");
        }
    }
}
