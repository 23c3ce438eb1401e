//! A process's modules (every mapped executable file plus the vDSO) and
//! offline unwinding of a captured thread with framehop over each module's
//! own `.eh_frame`/`.eh_frame_hdr` (or `.debug_frame`): no frame pointers
//! needed. Unwinding reads only the copied stack bytes, never the live
//! process. Frames are symbolized, demangled and sanitized here.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

use crate::binary::{self, Binary, LoadError, Opened};
use crate::cache::BinaryCache;
use crate::evidence::{BinarySkips, Frame, Stack};
use crate::maps::Mapping;
use crate::memory;
use crate::ptrace::Captured;
use crate::sanitize::{MAX_CHARS, sanitize};

/// How binaries are loaded during one capture.
pub(crate) struct LoadPolicy {
    pub max_bytes: u64,
    pub dwarf: bool,
    /// Parsing of binaries not yet cached stops once this is spent.
    pub parse_budget: Duration,
}

struct ModuleInfo {
    range: Range<u64>,
    bias: u64,
    name: String,
    binary: Option<Arc<Binary>>,
}

pub(crate) struct Modules {
    unwinder: UnwinderX86_64<Arc<[u8]>>,
    /// Sorted by start address.
    modules: Vec<ModuleInfo>,
}

impl std::fmt::Debug for Modules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Modules").field("modules", &self.modules.len()).finish_non_exhaustive()
    }
}

fn file_name(path: &str) -> String {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    sanitize(path.rsplit('/').next().unwrap_or(path), MAX_CHARS)
}

impl Modules {
    /// Loads (or takes from `cache`) every executable mapped file of `pid`.
    pub(crate) fn build(
        pid: u32,
        maps: &[Mapping],
        cache: &mut BinaryCache,
        policy: &LoadPolicy,
        skips: &mut BinarySkips,
    ) -> Modules {
        let started = Instant::now();
        let mut by_file: BTreeMap<(&str, u64), Vec<&Mapping>> = BTreeMap::new();
        for m in maps.iter().filter(|m| m.inode != 0 && !m.path.is_empty()) {
            by_file.entry((m.dev.as_str(), m.inode)).or_default().push(m);
        }
        let mut modules = Modules { unwinder: UnwinderX86_64::new(), modules: Vec::new() };
        for mappings in by_file.values() {
            let Some(exec) = mappings.iter().find(|m| m.executable) else { continue };
            let (Some(lo), Some(hi)) =
                (mappings.iter().map(|m| m.start).min(), mappings.iter().map(|m| m.end).max())
            else {
                continue;
            };
            let first = mappings.iter().min_by_key(|m| m.start).copied().unwrap_or(exec);
            let name = file_name(&first.path);
            let binary = match load(pid, first, cache, policy, started) {
                Ok(b) => Some(b),
                Err(e) => {
                    match e {
                        LoadError::TooLarge => skips.too_large += 1,
                        LoadError::Unreadable => skips.unreadable += 1,
                        LoadError::Unparsable => skips.unparsable += 1,
                        LoadError::OverBudget => skips.over_budget += 1,
                    }
                    None
                }
            };
            // Without the file we still name the module: offsets are file
            // offsets of the executable mapping.
            let bias = binary
                .as_ref()
                .and_then(|b| b.bias(first.start, first.offset))
                .unwrap_or(exec.start.wrapping_sub(exec.offset));
            modules.add(name, lo..hi, bias, binary);
        }
        if let Some(vdso) = maps.iter().find(|m| m.path == "[vdso]") {
            let mut bytes = vec![0u8; usize::try_from(vdso.end - vdso.start).unwrap_or(0).min(1 << 20)];
            if memory::read(pid, vdso.start, &mut bytes).ok() == Some(bytes.len())
                && let Ok(b) = Binary::from_bytes(&bytes, policy.max_bytes)
            {
                let bias = b.bias(vdso.start, 0).unwrap_or(vdso.start);
                modules.add("[vdso]".to_owned(), vdso.start..vdso.end, bias, Some(Arc::new(b)));
            }
        }
        modules.modules.sort_by_key(|m| m.range.start);
        modules
    }

    fn add(&mut self, name: String, range: Range<u64>, bias: u64, binary: Option<Arc<Binary>>) {
        if let Some(b) = &binary {
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: b.text.as_ref().map(|s| s.0.clone()),
                text: b.text.as_ref().map(|s| s.1.clone()),
                got_svma: b.got.clone(),
                eh_frame_svma: b.eh_frame.as_ref().map(|s| s.0.clone()),
                eh_frame: b.eh_frame.as_ref().map(|s| s.1.clone()),
                eh_frame_hdr_svma: b.eh_frame_hdr.as_ref().map(|s| s.0.clone()),
                eh_frame_hdr: b.eh_frame_hdr.as_ref().map(|s| s.1.clone()),
                debug_frame: b.debug_frame.as_ref().map(|s| s.1.clone()),
                ..Default::default()
            };
            self.unwinder.add_module(Module::new(name.clone(), range.clone(), bias, info));
        }
        self.modules.push(ModuleInfo { range, bias, name, binary });
    }

    fn module_for(&self, avma: u64) -> Option<&ModuleInfo> {
        let i = self.modules.partition_point(|m| m.range.start <= avma);
        let m = self.modules.get(i.checked_sub(1)?)?;
        m.range.contains(&avma).then_some(m)
    }

    /// Unwinds and symbolizes one captured thread (at most `max_frames`).
    pub(crate) fn stack(&self, captured: &Captured, cache: &mut CacheX86_64, max_frames: usize) -> Stack {
        let regs = captured.regs;
        let mut read = |addr: u64| captured.read_u64(addr);
        let mut frames = Vec::new();
        let mut truncated = None;
        let mut iter = self.unwinder.iter_frames(
            regs.ip,
            UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp),
            cache,
            &mut read,
        );
        loop {
            match iter.next() {
                Ok(Some(address)) => {
                    if frames.len() >= max_frames {
                        truncated = Some(format!("more than {max_frames} frames"));
                        break;
                    }
                    self.symbolize(address, &mut frames);
                }
                Ok(None) => break,
                Err(e) => {
                    truncated = Some(sanitize(&e.to_string(), MAX_CHARS));
                    break;
                }
            }
        }
        Stack { frames, truncated }
    }

    fn symbolize(&self, address: FrameAddress, out: &mut Vec<Frame>) {
        let addr = address.address();
        // A return address points after the call: look up the call itself.
        let lookup = address.address_for_lookup();
        let Some(m) = self.module_for(lookup) else {
            out.push(Frame {
                addr,
                module: None,
                offset: addr,
                function: None,
                location: None,
                inlined: false,
            });
            return;
        };
        let offset = lookup.wrapping_sub(m.bias);
        let symbolized = m.binary.as_ref().map(|b| b.symbolize(offset)).unwrap_or_default();
        if symbolized.is_empty() {
            out.push(Frame {
                addr,
                module: Some(m.name.clone()),
                offset,
                function: None,
                location: None,
                inlined: false,
            });
        }
        let n = symbolized.len();
        for (i, s) in symbolized.into_iter().enumerate() {
            out.push(Frame {
                addr,
                module: Some(m.name.clone()),
                offset,
                function: s.function.map(|f| sanitize(&binary::demangle(&f), MAX_CHARS)),
                location: s.location.map(|l| sanitize(&l, MAX_CHARS)),
                inlined: i + 1 < n,
            });
        }
    }
}

/// The cached or freshly loaded binary behind `mapping`.
fn load(
    pid: u32,
    mapping: &Mapping,
    cache: &mut BinaryCache,
    policy: &LoadPolicy,
    started: Instant,
) -> Result<Arc<Binary>, LoadError> {
    let opened = binary::open_path(&mapping.map_file(pid)).or_else(|_| {
        if mapping.path.starts_with('/') && !mapping.path.ends_with(" (deleted)") {
            binary::open_in_root(pid, &mapping.path)
        } else {
            Err(LoadError::Unreadable)
        }
    })?;
    if let Some(hit) = cache.get(&opened.key) {
        return hit;
    }
    if started.elapsed() > policy.parse_budget {
        return Err(LoadError::OverBudget);
    }
    let key = opened.key;
    let debug_file = |build_id: &[u8]| -> Option<Opened> {
        let hex: String = build_id.iter().map(|b| format!("{b:02x}")).collect();
        let (dir, file) = hex.split_at(2);
        binary::open_in_root(pid, &format!("/usr/lib/debug/.build-id/{dir}/{file}.debug")).ok()
    };
    let loaded = Binary::load(opened, policy.max_bytes, policy.dwarf, &debug_file).map(Arc::new);
    cache.insert(key, loaded.clone());
    loaded
}
