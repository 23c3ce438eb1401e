//! Test-only fault hook (debug builds only): with
//! `VARTA_TEST_WEDGE_PROCESSOR_AFTER=N` the processor thread blocks forever
//! after emitting N events — how the integration tests wedge a pipeline to
//! check that the health endpoint and the systemd watchdog notice (see
//! [`varta_embed::compose::Pipeline::wedge_after`]).

pub fn from_env() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var("VARTA_TEST_WEDGE_PROCESSOR_AFTER").ok()?.parse().ok()
}
