//! Per-binary cache: the bytes framehop needs (.eh_frame & co) plus a symbol table and an
//! optional DWARF context, keyed by GNU build-id (falling back to dev/inode/size/mtime).
//!
//! Hostile-ELF posture (the target process controls the file we parse):
//! - file size cap (`MAX_FILE_BYTES`), section size caps, symbol count cap;
//! - read into memory (no mmap: a target truncating a mapped file would SIGBUS us);
//! - `object`/`gimli` are bounds-checked, pure-Rust parsers (no unsafe on the parse path);
//! - every failure degrades to "module+offset", never aborts the capture.
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

pub const MAX_FILE_BYTES: u64 = 512 << 20;
pub const MAX_SECTION_BYTES: u64 = 128 << 20;
pub const MAX_SYMBOLS: usize = 4_000_000;

type R = gimli::EndianArcSlice<gimli::RunTimeEndian>;

#[derive(Debug, Clone)]
pub struct Sym {
    pub addr: u64,
    pub size: u64,
    pub name: String,
}

pub struct BinaryInfo {
    pub build_id: Option<Vec<u8>>,
    /// (p_vaddr, p_offset, p_filesz) of PT_LOAD segments, to compute the load bias.
    pub loads: Vec<(u64, u64, u64)>,
    pub text_svma: Option<std::ops::Range<u64>>,
    pub text: Option<Arc<[u8]>>,
    pub eh_frame_svma: Option<std::ops::Range<u64>>,
    pub eh_frame: Option<Arc<[u8]>>,
    pub eh_frame_hdr_svma: Option<std::ops::Range<u64>>,
    pub eh_frame_hdr: Option<Arc<[u8]>>,
    pub got_svma: Option<std::ops::Range<u64>>,
    /// Sorted by addr, FUNC symbols from .symtab + .dynsym (+ debug file's .symtab).
    pub syms: Vec<Sym>,
    pub dwarf: Option<addr2line::Context<R>>,
    pub has_symtab: bool,
    pub debug_file: Option<String>,
    pub parse_ns: u64,
}

fn section_bytes(obj: &object::File<'_>, name: &str) -> Option<(std::ops::Range<u64>, Arc<[u8]>)> {
    let s = obj.section_by_name(name)?;
    if s.size() > MAX_SECTION_BYTES {
        return None;
    }
    let data = s.uncompressed_data().ok()?;
    Some((s.address()..s.address() + s.size(), Arc::from(&*data)))
}

fn collect_syms(obj: &object::File<'_>, out: &mut Vec<Sym>) -> bool {
    let mut has_symtab = false;
    for (i, iter) in [obj.symbols(), obj.dynamic_symbols()].into_iter().enumerate() {
        for s in iter {
            if out.len() >= MAX_SYMBOLS {
                break;
            }
            if s.kind() != SymbolKind::Text || s.address() == 0 {
                continue;
            }
            if let Ok(n) = s.name() {
                if i == 0 {
                    has_symtab = true;
                }
                out.push(Sym { addr: s.address(), size: s.size(), name: n.to_string() });
            }
        }
    }
    has_symtab
}

fn load_dwarf(obj: &object::File<'_>) -> Option<addr2line::Context<R>> {
    obj.section_by_name(".debug_info")?;
    let endian = if obj.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let load = |id: gimli::SectionId| -> Result<R, ()> {
        let data: Cow<[u8]> = match obj.section_by_name(id.name()) {
            Some(s) if s.size() <= MAX_SECTION_BYTES => s.uncompressed_data().unwrap_or(Cow::Borrowed(&[])),
            _ => Cow::Borrowed(&[]),
        };
        Ok(gimli::EndianArcSlice::new(Arc::from(&*data), endian))
    };
    let dwarf = gimli::Dwarf::load(load).ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

/// Look for a detached debug file by build-id (Debian's *-dbg / debuginfod layout).
/// NOTE: this reads the *collector's* filesystem; for a containerised target the debug
/// file must come from the target's root (/proc/<pid>/root/usr/lib/debug/...) instead.
fn debug_file_path(root: &str, build_id: &[u8]) -> Option<String> {
    if build_id.len() < 2 {
        return None;
    }
    let hex: String = build_id.iter().map(|b| format!("{b:02x}")).collect();
    let p = format!("{root}/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..]);
    std::path::Path::new(&p).exists().then_some(p)
}

fn read_capped(path: &str) -> Result<Vec<u8>, String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    if md.len() > MAX_FILE_BYTES {
        return Err(format!("{path}: {} bytes > cap", md.len()));
    }
    std::fs::read(path).map_err(|e| format!("{path}: {e}"))
}

impl BinaryInfo {
    /// Parse an ELF file. `use_debug_dir`: look up /usr/lib/debug/.build-id/.
    pub fn load(path: &str, use_debug_dir: bool, want_dwarf: bool) -> Result<BinaryInfo, String> {
        let t0 = crate::mono_ns();
        let data = read_capped(path)?;
        let obj = object::File::parse(&*data).map_err(|e| format!("{path}: {e}"))?;
        let build_id = obj.build_id().ok().flatten().map(|b| b.to_vec());
        let loads = obj
            .segments()
            .map(|s| {
                let (off, fsz) = s.file_range();
                (s.address(), off, fsz)
            })
            .collect();
        let text = section_bytes(&obj, ".text");
        let eh = section_bytes(&obj, ".eh_frame");
        let ehh = section_bytes(&obj, ".eh_frame_hdr");
        let got = obj.section_by_name(".got").map(|s| s.address()..s.address() + s.size());
        let mut syms = Vec::new();
        let has_symtab = collect_syms(&obj, &mut syms);
        let mut dwarf = if want_dwarf { load_dwarf(&obj) } else { None };
        let mut debug_file = None;
        if use_debug_dir && (!has_symtab || dwarf.is_none()) {
            if let Some(p) = build_id.as_deref().and_then(|b| debug_file_path("", b)) {
                if let Ok(dd) = read_capped(&p) {
                    if let Ok(dobj) = object::File::parse(&*dd) {
                        collect_syms(&dobj, &mut syms);
                        if want_dwarf && dwarf.is_none() {
                            dwarf = load_dwarf(&dobj);
                        }
                        debug_file = Some(p);
                    }
                }
            }
        }
        syms.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.size.cmp(&a.size)));
        syms.dedup_by(|a, b| a.addr == b.addr);
        Ok(BinaryInfo {
            build_id,
            loads,
            text_svma: text.as_ref().map(|t| t.0.clone()),
            text: text.map(|t| t.1),
            eh_frame_svma: eh.as_ref().map(|t| t.0.clone()),
            eh_frame: eh.map(|t| t.1),
            eh_frame_hdr_svma: ehh.as_ref().map(|t| t.0.clone()),
            eh_frame_hdr: ehh.map(|t| t.1),
            got_svma: got,
            syms,
            dwarf,
            has_symtab,
            debug_file,
            parse_ns: crate::mono_ns() - t0,
        })
    }

    /// Load bias for a mapping of this file at `start` with file offset `offset`.
    pub fn bias_for(&self, start: u64, offset: u64) -> Option<u64> {
        let &(vaddr, poff, _) = self
            .loads
            .iter()
            .find(|&&(_, poff, fsz)| poff <= offset && offset < poff + fsz.max(1))?;
        // address of file offset X = bias + vaddr + (X - poff)
        Some(start.wrapping_sub(offset).wrapping_add(poff).wrapping_sub(vaddr))
    }

    /// Symbolize an SVMA. Returns frames innermost-first: inline frames from DWARF, then
    /// the containing symbol. Never guesses past a symbol's size.
    pub fn symbolize(&self, svma: u64) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(ctx) = &self.dwarf {
            if let Ok(mut it) = ctx.find_frames(svma).skip_all_loads() {
                while let Ok(Some(f)) = it.next() {
                    let name = f
                        .function
                        .as_ref()
                        .and_then(|n| n.demangle().ok().map(|s| s.into_owned()))
                        .unwrap_or_else(|| "??".into());
                    let loc = f
                        .location
                        .map(|l| format!(" at {}:{}", l.file.unwrap_or("?").rsplit('/').next().unwrap_or("?"), l.line.unwrap_or(0)))
                        .unwrap_or_default();
                    out.push(format!("{name}{loc}"));
                }
            }
        }
        if out.is_empty() {
            let i = self.syms.partition_point(|s| s.addr <= svma);
            if i > 0 {
                let s = &self.syms[i - 1];
                if svma < s.addr + s.size.max(1) {
                    out.push(format!("{}+{:#x}", demangle(&s.name), svma - s.addr));
                }
            }
        }
        out
    }
}

/// Rust (legacy + v0) first, then Itanium C++, else the raw name.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}"); // {:#} drops the ::h<hash> suffix
    }
    if name.starts_with("_Z") {
        if let Ok(s) = cpp_demangle::Symbol::new(name) {
            if let Ok(d) = s.demangle() {
                return d;
            }
        }
    }
    name.to_string()
}

/// Cache key: build-id when present, else file identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BinKey {
    BuildId(Vec<u8>),
    Inode { dev: u64, ino: u64, size: u64, mtime: i64 },
}

#[derive(Default)]
pub struct BinaryCache {
    pub by_key: HashMap<BinKey, Arc<BinaryInfo>>,
    pub hits: u64,
    pub misses: u64,
}

impl BinaryCache {
    pub fn get_or_load(&mut self, path: &str, use_debug_dir: bool, want_dwarf: bool) -> Result<Arc<BinaryInfo>, String> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
        let key = BinKey::Inode { dev: md.dev(), ino: md.ino(), size: md.size(), mtime: md.mtime() };
        // (A production version would read just the build-id note first and key on it,
        // so the same library in many containers is parsed once.)
        if let Some(b) = self.by_key.get(&key) {
            self.hits += 1;
            return Ok(b.clone());
        }
        self.misses += 1;
        let b = Arc::new(BinaryInfo::load(path, use_debug_dir, want_dwarf)?);
        self.by_key.insert(key, b.clone());
        Ok(b)
    }
}
