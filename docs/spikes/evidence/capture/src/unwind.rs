//! Offline unwinding with framehop from captured (ip, sp, bp) + stack bytes, using each
//! module's .eh_frame/.eh_frame_hdr (no frame pointers needed; falls back to rbp chains
//! only where no CFI covers an address).
use crate::maps::Mapping;
use crate::ptrace_capture::Captured;
use crate::symbols::{BinaryCache, BinaryInfo};
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const MAX_FRAMES: usize = 256;

/// A process's module list, ready to unwind and symbolize any of its threads.
pub struct ProcessModules {
    pub unwinder: UnwinderX86_64<Arc<[u8]>>,
    /// (avma range, bias, name, binary) sorted by start.
    pub modules: Vec<(std::ops::Range<u64>, u64, String, Arc<BinaryInfo>)>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub addr: u64,
    pub is_return_address: bool,
    pub module: Option<String>,
    pub offset: u64,
    /// innermost-first (inline frames first); empty = unsymbolized.
    pub names: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Stack {
    pub frames: Vec<Frame>,
    /// Why unwinding stopped early (None = reached a recognised end of stack).
    pub truncated: Option<String>,
}

fn short(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

impl ProcessModules {
    /// Build modules from /proc/<pid>/maps. Files are opened through
    /// /proc/<pid>/map_files/<start>-<end> (exact inode the target mapped: works across
    /// mount namespaces and for deleted/replaced files). The vDSO is read from
    /// /proc/<pid>/mem.
    pub fn build(pid: i32, maps: &[Mapping], cache: &mut BinaryCache, use_debug_dir: bool, want_dwarf: bool) -> ProcessModules {
        // Group file-backed mappings by (dev, inode).
        let mut by_file: BTreeMap<(String, u64), Vec<&Mapping>> = BTreeMap::new();
        for m in maps {
            if m.inode != 0 && !m.path.is_empty() {
                by_file.entry((m.dev.clone(), m.inode)).or_default().push(m);
            }
        }
        let mut pm = ProcessModules { unwinder: UnwinderX86_64::new(), modules: vec![], errors: vec![] };
        for (_, ms) in by_file {
            if !ms.iter().any(|m| m.is_exec()) {
                continue; // data-only mappings (fonts, locale archives...)
            }
            let first = ms[0];
            let path = format!("/proc/{pid}/map_files/{:x}-{:x}", first.start, first.end);
            let bin = match cache.get_or_load(&path, use_debug_dir, want_dwarf) {
                Ok(b) => b,
                Err(e) => {
                    pm.errors.push(e);
                    continue;
                }
            };
            let Some(bias) = bin.bias_for(first.start, first.offset) else {
                pm.errors.push(format!("{}: no PT_LOAD for offset {:#x}", first.path, first.offset));
                continue;
            };
            let range = ms.iter().map(|m| m.start).min().unwrap()..ms.iter().map(|m| m.end).max().unwrap();
            pm.add(short(&first.path), range, bias, bin);
        }
        // vDSO: a tiny in-memory ELF; a thread interrupted inside clock_gettime sits there.
        if let Some(v) = maps.iter().find(|m| m.path == "[vdso]") {
            match read_mem(pid, v.start, (v.end - v.start) as usize) {
                Ok(bytes) => {
                    let tmp = std::env::temp_dir().join(format!("evspike-vdso-{pid}"));
                    // BinaryInfo::load takes a path; the vDSO is small, round-trip via a temp file.
                    if std::fs::write(&tmp, &bytes).is_ok() {
                        if let Ok(b) = BinaryInfo::load(tmp.to_str().unwrap(), false, false) {
                            let bias = b.bias_for(v.start, 0).unwrap_or(v.start);
                            pm.add("[vdso]".into(), v.start..v.end, bias, Arc::new(b));
                        }
                        let _ = std::fs::remove_file(&tmp);
                    }
                }
                Err(e) => pm.errors.push(format!("vdso: {e}")),
            }
        }
        pm.modules.sort_by_key(|m| m.0.start);
        pm
    }

    fn add(&mut self, name: String, range: std::ops::Range<u64>, bias: u64, bin: Arc<BinaryInfo>) {
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: bin.text_svma.clone(),
            text: bin.text.clone(),
            got_svma: bin.got_svma.clone(),
            eh_frame_svma: bin.eh_frame_svma.clone(),
            eh_frame: bin.eh_frame.clone(),
            eh_frame_hdr_svma: bin.eh_frame_hdr_svma.clone(),
            eh_frame_hdr: bin.eh_frame_hdr.clone(),
            ..Default::default()
        };
        self.unwinder.add_module(Module::new(name.clone(), range.clone(), bias, info));
        self.modules.push((range, bias, name, bin));
    }

    fn module_for(&self, avma: u64) -> Option<&(std::ops::Range<u64>, u64, String, Arc<BinaryInfo>)> {
        let i = self.modules.partition_point(|m| m.0.start <= avma);
        let m = self.modules.get(i.checked_sub(1)?)?;
        m.0.contains(&avma).then_some(m)
    }

    /// Unwind only (addresses).
    pub fn unwind(&self, c: &Captured, cache: &mut CacheX86_64) -> (Vec<FrameAddress>, Option<String>) {
        let mut read = |a: u64| c.stack.read_u64(a);
        let mut it = self.unwinder.iter_frames(c.regs.ip, UnwindRegsX86_64::new(c.regs.ip, c.regs.sp, c.regs.bp), cache, &mut read);
        let mut out = Vec::new();
        let dbg = std::env::var_os("EVSPIKE_DEBUG").is_some();
        if dbg {
            eprintln!("tid {} ip={:#x} sp={:#x} bp={:#x} stack={}B", c.tid, c.regs.ip, c.regs.sp, c.regs.bp, c.stack.bytes.len());
        }
        loop {
            let r = it.next();
            if dbg {
                eprintln!("  step -> {r:?}");
            }
            match r {
                Ok(Some(f)) => {
                    out.push(f);
                    if out.len() >= MAX_FRAMES {
                        return (out, Some("frame cap".into()));
                    }
                }
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(format!("{e}"))),
            }
        }
    }

    pub fn symbolize(&self, frames: &[FrameAddress]) -> Vec<Frame> {
        frames
            .iter()
            .map(|f| {
                let addr = f.address();
                // Return addresses point after the call; look up addr-1 to stay in the caller.
                let lookup = f.address_for_lookup();
                let is_ra = matches!(f, FrameAddress::ReturnAddress(_));
                match self.module_for(lookup) {
                    Some((_, bias, name, bin)) => Frame {
                        addr,
                        is_return_address: is_ra,
                        module: Some(name.clone()),
                        offset: lookup - bias,
                        names: bin.symbolize(lookup - bias),
                    },
                    None => Frame { addr, is_return_address: is_ra, module: None, offset: addr, names: vec![] },
                }
            })
            .collect()
    }

    pub fn unwind_and_symbolize(&self, c: &Captured, cache: &mut CacheX86_64) -> Stack {
        let (addrs, truncated) = self.unwind(c, cache);
        Stack { frames: self.symbolize(&addrs), truncated }
    }
}

fn read_mem(pid: i32, addr: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, addr)?;
    Ok(buf)
}

impl Stack {
    /// One line per frame, `#N name (module+0xoff)`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut n = 0;
        for f in &self.frames {
            let loc = match &f.module {
                Some(m) => format!("{m}+{:#x}", f.offset),
                None => format!("{:#x}", f.addr),
            };
            if f.names.is_empty() {
                s += &format!("  #{n:<2} ?? ({loc})\n");
                n += 1;
            }
            for (i, name) in f.names.iter().enumerate() {
                let inl = if i + 1 < f.names.len() { " [inlined]" } else { "" };
                s += &format!("  #{n:<2} {name}{inl} ({loc})\n");
                n += 1;
            }
        }
        if let Some(t) = &self.truncated {
            s += &format!("  (truncated: {t})\n");
        }
        s
    }
    /// A compact signature for grouping identical stacks (function names only).
    pub fn signature(&self) -> String {
        self.frames
            .iter()
            .map(|f| f.names.last().map(|n| n.split(" at ").next().unwrap_or(n).split('+').next().unwrap_or(n).to_string()).unwrap_or_else(|| format!("{}+{:#x}", f.module.as_deref().unwrap_or("?"), f.offset)))
            .collect::<Vec<_>>()
            .join(" <- ")
    }
}
