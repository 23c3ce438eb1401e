//! One mapped binary, parsed as hostile input: the target controls the file
//! (and may be root-owned only in its own container). We open it without
//! following the target's paths in our root (`/proc/<pid>/map_files`, else
//! `openat2(RESOLVE_IN_ROOT)` under `/proc/<pid>/root`), refuse anything
//! that is not a regular file or is larger than the cap, read it with a
//! bounded `read` (never mmap: a file truncated under us would SIGBUS),
//! and parse it with bounds-checked pure-Rust parsers (`object`, `gimli`,
//! `addr2line`) under `catch_unwind`. Sections are capped after
//! decompression, symbols are capped in number. What fails leaves the
//! module's frames as `module+offset`.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::{Arc, Mutex};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

/// Function symbols kept per binary.
const MAX_SYMBOLS: usize = 2_000_000;

type Dwarf = addr2line::Context<gimli::EndianArcSlice<gimli::RunTimeEndian>>;

/// Why a binary was not loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadError {
    TooLarge,
    Unreadable,
    Unparsable,
    /// Not attempted: the capture's parse budget was spent (not cached).
    OverBudget,
}

/// What identifies a file's content for the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// An opened binary, not yet read.
pub(crate) struct Opened {
    file: File,
    pub key: FileKey,
}

#[derive(Debug)]
struct Symbol {
    addr: u64,
    size: u64,
    name: Box<str>,
}

/// The parts of one binary that unwinding and symbolizing need.
pub(crate) struct Binary {
    /// (p_vaddr, p_offset, p_filesz) of the loadable segments.
    loads: Vec<(u64, u64, u64)>,
    pub text: Option<(std::ops::Range<u64>, Arc<[u8]>)>,
    pub eh_frame: Option<(std::ops::Range<u64>, Arc<[u8]>)>,
    pub eh_frame_hdr: Option<(std::ops::Range<u64>, Arc<[u8]>)>,
    pub debug_frame: Option<(std::ops::Range<u64>, Arc<[u8]>)>,
    pub got: Option<std::ops::Range<u64>>,
    /// Function symbols (.symtab, .dynsym, and the debug file's), by address.
    symbols: Vec<Symbol>,
    /// addr2line's lazily filled context is not `Sync`; the lock (never
    /// contended: one worker symbolizes) lets the cache cross threads.
    dwarf: Option<Mutex<Dwarf>>,
}

impl std::fmt::Debug for Binary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binary")
            .field("symbols", &self.symbols.len())
            .field("dwarf", &self.dwarf.is_some())
            .finish_non_exhaustive()
    }
}

/// A symbolized address: function name (raw, not yet demangled), and
/// `file:line` when DWARF knows it. Inlined frames come first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Symbolized {
    pub function: Option<String>,
    pub location: Option<String>,
}

fn open_flags() -> i32 {
    libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC
}

/// Opens `path` read-only without blocking on a FIFO or device, and keeps
/// it only when it is a regular file.
pub(crate) fn open_path(path: &str) -> Result<Opened, LoadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(open_flags())
        .open(path)
        .map_err(|_| LoadError::Unreadable)?;
    opened(file)
}

/// Opens `path` (absolute, as the target sees it) inside the target's root
/// directory: symlinks and `..` cannot leave it, magic links are refused.
pub(crate) fn open_in_root(pid: u32, path: &str) -> Result<Opened, LoadError> {
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(format!("/proc/{pid}/root"))
        .map_err(|_| LoadError::Unreadable)?;
    let relative = path.trim_start_matches('/');
    let c_path = std::ffi::CString::new(relative).map_err(|_| LoadError::Unreadable)?;
    // SAFETY: open_how is plain integers; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(libc::O_RDONLY | open_flags()).unwrap_or(0);
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads the NUL-terminated path and the `open_how` of
    // the size we pass, both alive for the call; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0).ok_or(LoadError::Unreadable)?;
    // SAFETY: `fd` was just returned by openat2 and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    opened(file)
}

fn opened(file: File) -> Result<Opened, LoadError> {
    let md = file.metadata().map_err(|_| LoadError::Unreadable)?;
    if !md.file_type().is_file() {
        return Err(LoadError::Unreadable);
    }
    let key = FileKey {
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
    };
    Ok(Opened { file, key })
}

/// Reads at most `max_bytes` (a file that grows past it is refused).
fn read_bounded(opened: Opened, max_bytes: u64) -> Result<Vec<u8>, LoadError> {
    if opened.key.size > max_bytes {
        return Err(LoadError::TooLarge);
    }
    let mut data = Vec::with_capacity(usize::try_from(opened.key.size).unwrap_or(0));
    opened
        .file
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|_| LoadError::Unreadable)?;
    if data.len() as u64 > max_bytes {
        return Err(LoadError::TooLarge);
    }
    Ok(data)
}

impl Binary {
    /// Reads and parses an opened file. `debug_file` finds a separate debug
    /// file by GNU build-id (it is consulted only when the binary lacks a
    /// symbol table or DWARF).
    pub(crate) fn load(
        opened: Opened,
        max_bytes: u64,
        want_dwarf: bool,
        debug_file: &dyn Fn(&[u8]) -> Option<Opened>,
    ) -> Result<Binary, LoadError> {
        let data = read_bounded(opened, max_bytes)?;
        let debug = |build_id: &[u8]| debug_file(build_id).and_then(|o| read_bounded(o, max_bytes).ok());
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Binary::parse(&data, max_bytes, want_dwarf, &debug)
        }))
        .unwrap_or(Err(LoadError::Unparsable))
    }

    /// Parses an ELF image already in memory (the vDSO).
    pub(crate) fn from_bytes(data: &[u8], max_bytes: u64) -> Result<Binary, LoadError> {
        std::panic::catch_unwind(|| Binary::parse(data, max_bytes, false, &|_| None))
            .unwrap_or(Err(LoadError::Unparsable))
    }

    fn parse(
        data: &[u8],
        max_bytes: u64,
        want_dwarf: bool,
        debug_file: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<Binary, LoadError> {
        let obj = object::File::parse(data).map_err(|_| LoadError::Unparsable)?;
        let loads = obj
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (s.address(), offset, size)
            })
            .collect();
        let mut symbols = Vec::new();
        let has_symtab = collect_symbols(&obj, &mut symbols);
        let mut dwarf = if want_dwarf { load_dwarf(&obj, max_bytes) } else { None };
        if !has_symtab || (want_dwarf && dwarf.is_none()) {
            let build_id = obj.build_id().ok().flatten().filter(|b| b.len() >= 2);
            let debug_data = build_id.and_then(debug_file);
            if let Some(debug_obj) = debug_data.as_deref().and_then(|d| object::File::parse(d).ok()) {
                collect_symbols(&debug_obj, &mut symbols);
                if want_dwarf && dwarf.is_none() {
                    dwarf = load_dwarf(&debug_obj, max_bytes);
                }
            }
        }
        symbols.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.size.cmp(&a.size)));
        symbols.dedup_by(|a, b| a.addr == b.addr);
        Ok(Binary {
            loads,
            text: section(&obj, ".text", max_bytes),
            eh_frame: section(&obj, ".eh_frame", max_bytes),
            eh_frame_hdr: section(&obj, ".eh_frame_hdr", max_bytes),
            debug_frame: section(&obj, ".debug_frame", max_bytes),
            got: obj.section_by_name(".got").map(|s| s.address()..s.address().saturating_add(s.size())),
            symbols,
            dwarf: dwarf.map(Mutex::new),
        })
    }

    /// Load bias of a mapping of this file at `start` with file `offset`.
    pub(crate) fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        let &(vaddr, file_offset, _) = self
            .loads
            .iter()
            .find(|&&(_, off, size)| off <= offset && offset < off.saturating_add(size.max(1)))?;
        // Address of file offset X = bias + vaddr + (X - file_offset).
        Some(start.wrapping_sub(offset).wrapping_add(file_offset).wrapping_sub(vaddr))
    }

    /// Symbolizes a file-relative address: inlined frames (DWARF) first,
    /// then the function that contains it. Never names a symbol the address
    /// lies beyond.
    pub(crate) fn symbolize(&self, svma: u64) -> Vec<Symbolized> {
        let mut out = Vec::new();
        let dwarf = self.dwarf.as_ref().map(|d| d.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if let Some(dwarf) = &dwarf
            && let Ok(mut frames) = dwarf.find_frames(svma).skip_all_loads()
        {
            while let Ok(Some(f)) = frames.next() {
                if out.len() >= 32 {
                    break;
                }
                let function = f.function.as_ref().and_then(|n| n.raw_name().ok()).map(|n| n.into_owned());
                let location = f.location.and_then(|l| {
                    let file = l.file?.rsplit('/').next()?;
                    Some(format!("{file}:{}", l.line.unwrap_or(0)))
                });
                out.push(Symbolized { function, location });
            }
        }
        // The symbol table names the containing function in full (a Rust
        // path with its module, where DWARF line tables may only have the
        // short name); DWARF adds the inlined frames and file:line.
        let symbol = self.symbol_for(svma).map(str::to_owned);
        match out.last_mut() {
            Some(outer) if symbol.is_some() => outer.function = symbol,
            Some(_) => {}
            None => out.push(Symbolized { function: symbol, location: None }),
        }
        out
    }

    /// The function symbol containing `svma`; never one it lies beyond.
    fn symbol_for(&self, svma: u64) -> Option<&str> {
        let i = self.symbols.partition_point(|s| s.addr <= svma);
        let sym = self.symbols.get(i.checked_sub(1)?)?;
        (svma < sym.addr.saturating_add(sym.size.max(1))).then_some(&*sym.name)
    }
}

fn section(obj: &object::File<'_>, name: &str, cap: u64) -> Option<(std::ops::Range<u64>, Arc<[u8]>)> {
    let s = obj.section_by_name(name)?;
    let data = section_data(&s, cap)?;
    Some((s.address()..s.address().saturating_add(s.size()), Arc::from(&*data)))
}

/// A section's bytes, refusing any whose declared size (decompressed, for
/// compressed debug sections) exceeds `cap`.
fn section_data<'d>(s: &object::Section<'d, '_>, cap: u64) -> Option<std::borrow::Cow<'d, [u8]>> {
    let range = s.compressed_file_range().ok()?;
    if s.size() > cap || range.uncompressed_size > cap || range.compressed_size > cap {
        return None;
    }
    s.uncompressed_data().ok()
}

/// Adds the function symbols of `obj`; says whether it had a `.symtab`.
fn collect_symbols(obj: &object::File<'_>, out: &mut Vec<Symbol>) -> bool {
    let mut has_symtab = false;
    for (i, table) in [obj.symbols(), obj.dynamic_symbols()].into_iter().enumerate() {
        for s in table {
            if out.len() >= MAX_SYMBOLS {
                return has_symtab;
            }
            if s.kind() != SymbolKind::Text || s.address() == 0 {
                continue;
            }
            if let Ok(name) = s.name() {
                has_symtab |= i == 0;
                out.push(Symbol { addr: s.address(), size: s.size(), name: name.into() });
            }
        }
    }
    has_symtab
}

fn load_dwarf(obj: &object::File<'_>, cap: u64) -> Option<Dwarf> {
    obj.section_by_name(".debug_info")?;
    let endian =
        if obj.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let load = |id: gimli::SectionId| -> Result<_, ()> {
        let data = obj.section_by_name(id.name()).and_then(|s| section_data(&s, cap));
        let bytes: Arc<[u8]> = data.map_or_else(|| Arc::from(&[][..]), |d| Arc::from(&*d));
        Ok(gimli::EndianArcSlice::new(bytes, endian))
    };
    let dwarf = gimli::Dwarf::load(load).ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

/// Demangles a Rust (legacy or v0, without the hash) or Itanium C++ name;
/// anything else is returned as is.
pub(crate) fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z")
        && let Some(d) = cpp_demangle::Symbol::new(name).ok().and_then(|s| s.demangle().ok())
    {
        return d;
    }
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_demangle_without_hashes() {
        assert_eq!(
            demangle("_ZN13rust_deadlock5locks16waiter_take_lock17h0123456789abcdefE"),
            "rust_deadlock::locks::waiter_take_lock"
        );
        assert_eq!(
            demangle("_RNvCs1234_13rust_deadlock16waiter_take_lock"),
            "rust_deadlock::waiter_take_lock"
        );
        assert_eq!(demangle("_ZN5Outer5innerEi"), "Outer::inner(int)");
        assert_eq!(demangle("waiter_take_lock"), "waiter_take_lock");
        assert_eq!(demangle("_Z"), "_Z");
    }

    #[test]
    fn our_own_executable_parses_and_oversized_files_are_refused() {
        let exe = open_path("/proc/self/exe").expect("own exe");
        let size = exe.key.size;
        let bin = Binary::load(exe, size, false, &|_| None).expect("parses");
        assert!(bin.eh_frame.is_some());
        assert!(!bin.symbols.is_empty());
        let exe = open_path("/proc/self/exe").expect("own exe");
        assert_eq!(Binary::load(exe, size - 1, false, &|_| None).err(), Some(LoadError::TooLarge));
        assert_eq!(open_path("/proc/self").err(), Some(LoadError::Unreadable), "a directory");
        assert_eq!(Binary::from_bytes(b"\x7fELF garbage", 1 << 20).err(), Some(LoadError::Unparsable));
    }

    #[test]
    fn open_in_root_stays_in_the_root() {
        let me = std::process::id();
        assert!(open_in_root(me, "/proc/self/exe").is_err(), "magic links are refused");
        assert!(open_in_root(me, "/etc/hostname").is_ok() || open_in_root(me, "/etc/passwd").is_ok());
    }
}
