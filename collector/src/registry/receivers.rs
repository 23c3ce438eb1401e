//! `receivers:` — the `vlp` receiver (UDS, UDP, secure UDP).

use std::path::Path;

use serde::de::MapAccess;
use serde_saphyr::Spanned;
use varta_embed::compose::Receiver;
use varta_pipeline::config::FieldError;
use varta_receiver::{KeyRing, TransportKind, VlpReceiverConfig};

use super::Factory;
use crate::config::components::{ComponentFamily, spanned_required};

#[derive(Debug)]
pub enum ReceiverConfig {
    Vlp(VlpReceiverConfig),
}

pub const FACTORIES: &[Factory] = &[Factory { kind: "vlp", aliases: &[] }];

impl ComponentFamily for ReceiverConfig {
    const SECTION: &'static str = "receivers";
    fn types() -> Vec<&'static str> {
        super::names(FACTORIES)
    }
    fn check(&self) -> Result<(), FieldError> {
        self.validate()
    }
    fn body<'de, A: MapAccess<'de>>(_kind: &str, map: &mut A) -> Result<Spanned<Self>, A::Error> {
        spanned_required(map, ReceiverConfig::Vlp)
    }
}

impl ReceiverConfig {
    fn vlp(&self) -> &VlpReceiverConfig {
        let ReceiverConfig::Vlp(cfg) = self;
        cfg
    }

    /// Its own checks.
    pub fn validate(&self) -> Result<(), FieldError> {
        Ok(self.vlp().validate()?)
    }

    /// Its key files (present, regular, owner-only, well-formed) and its
    /// socket's directory, without binding anything.
    pub fn check_files(&self) -> Result<(), String> {
        let cfg = self.vlp();
        for path in cfg.key_files.iter().flatten().chain(cfg.master_key_file.iter()) {
            varta_receiver::load_key_file(path).map_err(|e| e.to_string())?;
        }
        if let Some(dir) = cfg.path.as_deref().and_then(Path::parent)
            && !dir.as_os_str().is_empty()
            && !dir.is_dir()
        {
            return Err(format!("socket directory {} does not exist", dir.display()));
        }
        Ok(())
    }

    /// Its settings as a reload compares them, by value: everything but
    /// its key files, which a running receiver takes in place
    /// ([`ReceiverConfig::key_ring`]); anything else rebinds the socket.
    /// `storage` compares by the directory it names (`state_dir`), not by
    /// the extension's name: a new directory rebinds (and so moves its
    /// sessions there).
    pub fn reload_key(&self, state_dir: Option<&Path>) -> VlpReceiverConfig {
        let mut cfg = self.vlp().clone();
        cfg.key_files = None;
        cfg.master_key_file = None;
        cfg.storage = state_dir.map(|d| d.display().to_string());
        cfg
    }

    /// Whether a running receiver with settings `running` can take these
    /// (its state in `state_dir`) in place: only its keys differ.
    pub fn in_place(&self, running: &VlpReceiverConfig, state_dir: Option<&Path>) -> bool {
        self.reload_key(state_dir) == *running
    }

    /// Senders it cannot attest (plain UDP): beside attested receivers in
    /// one pipeline they get their share of the tracker only.
    pub fn unattested(&self) -> bool {
        self.vlp().transport == TransportKind::Udp
    }

    /// The `file_storage` extension it keeps state in (a secure
    /// receiver's replay sessions).
    pub fn storage(&self) -> Option<&str> {
        self.vlp().storage.as_deref()
    }

    /// Binds its socket (parked), feeding the pipelines `feeds`; its state
    /// (if it has `storage`) in `state_dir`.
    pub fn bind(&self, id: &str, feeds: Vec<String>, state_dir: Option<&Path>) -> Result<Receiver, String> {
        Receiver::bind(id, self.reload_key(state_dir), self.vlp(), feeds, state_dir)
            .map_err(|e| e.to_string())
    }

    /// A secure receiver's keys read again (a reload: keys are usually
    /// rotated by rewriting the same file).
    pub fn key_ring(&self, id: &str) -> Result<KeyRing, varta_receiver::ReceiverError> {
        varta_receiver::load_key_ring(id, self.vlp())
    }
}
