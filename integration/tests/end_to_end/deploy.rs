//! The deploy kit, each file checked by the real tool its users run:
//! `systemd-analyze verify` for the unit, `kubernetes-validate --strict`
//! for the manifests, `promtool check config` for the Kubernetes scrape
//! example, and `varta-collector validate` for the collector config the
//! ConfigMap ships. (The gateway config's shape is exercised end to end in
//! otlp.rs with rotel as the gateway; Prometheus rules and the Grafana
//! dashboard are checked in deploy_prometheus.rs.)

use std::path::{Path, PathBuf};
use std::process::Command;

use varta_integration::{binary, collector_cmd, peers, write_secret};

fn kit(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../otel-config").join(file)
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

/// `systemd-analyze verify` prints problems (and still exits 0 for many):
/// clean means success and silence.
fn verify_unit(path: &Path) -> (bool, String) {
    let (ok, said) = run(Command::new(peers::systemd_analyze()).arg("verify").arg(path));
    (ok && said.trim().is_empty(), said)
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(kit("systemd/varta-collector.service")).expect("unit");
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "RuntimeDirectory=varta",
        "Restart=",
        "User=varta",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(text.contains(key), "the unit lacks {key:?}");
    }
    // Verified against the binary this build made (the unit names /usr/local/bin).
    let unit = dir.path().join("varta-collector.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/varta-collector", &binary("varta-collector").display().to_string()),
    )
    .expect("write");
    let (ok, said) = verify_unit(&unit);
    assert!(ok, "systemd-analyze verify: {said}");
    // The check can fail: a misspelt key is reported.
    let broken = dir.path().join("broken.service");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&unit).expect("unit").replace("Restart=always", "Restartt=always"),
    )
    .expect("write");
    assert!(!verify_unit(&broken).0, "a broken unit must not verify");
}

/// The socket unit (socket activation) verifies beside the service, hands
/// the agents' socket to it, and the service keeps its runtime directory
/// (where the socket lives) across restarts.
#[test]
fn the_systemd_socket_unit_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = std::fs::read_to_string(kit("systemd/varta-collector.service")).expect("unit");
    assert!(service.contains("RuntimeDirectoryPreserve=yes"), "the socket must outlive a restart");
    std::fs::write(
        dir.path().join("varta-collector.service"),
        service.replace("/usr/local/bin/varta-collector", &binary("varta-collector").display().to_string()),
    )
    .expect("write");
    let socket = std::fs::read_to_string(kit("systemd/varta-collector.socket")).expect("socket unit");
    for key in
        ["ListenDatagram=/run/varta/varta.sock", "PassCredentials=yes", "Service=varta-collector.service"]
    {
        assert!(socket.contains(key), "the socket unit lacks {key:?}");
    }
    let unit = dir.path().join("varta-collector.socket");
    std::fs::write(&unit, &socket).expect("write");
    let (ok, said) = verify_unit(&unit);
    assert!(ok, "systemd-analyze verify: {said}");
    let broken = dir.path().join("broken.socket");
    std::fs::write(&broken, socket.replace("ListenDatagram=", "ListenDatagramm=")).expect("write");
    assert!(!verify_unit(&broken).0, "a broken unit must not verify");
}

fn kubernetes_validate(path: &Path) -> (bool, String) {
    run(Command::new(peers::kubernetes_validate()).args(["--strict", "--quiet"]).arg(path))
}

#[test]
fn the_kubernetes_manifests_validate() {
    for file in ["configmap.yaml", "daemonset.yaml", "service.yaml", "agent-pod.yaml"] {
        let (ok, said) = kubernetes_validate(&kit(&format!("kubernetes/{file}")));
        assert!(ok, "kubernetes-validate {file}: {said}");
    }
    let daemonset = std::fs::read_to_string(kit("kubernetes/daemonset.yaml")).expect("daemonset");
    for key in [
        "hostPID: true",
        "livenessProbe",
        "readinessProbe",
        "path: /run/varta",
        "resources:",
        "drop: [\"ALL\"]",
    ] {
        assert!(daemonset.contains(key), "the DaemonSet lacks {key}");
    }
    // The check can fail: an unknown field is refused under --strict.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, daemonset.replace("hostPID: true", "hostPID: true\n      hostPIDs: true"))
        .expect("write");
    assert!(!kubernetes_validate(&broken).0, "a broken manifest must not validate");
}

/// The collector config inside the ConfigMap, as `varta-collector validate`
/// sees it on a node (paths moved into a temp dir, a real token file).
#[test]
fn the_configmap_ships_a_valid_node_agent_config() {
    let text = std::fs::read_to_string(kit("kubernetes/configmap.yaml")).expect("configmap");
    let start = text.find("varta.yaml: |\n").expect("varta.yaml key") + "varta.yaml: |\n".len();
    let config: String =
        text[start..].lines().map(|l| l.strip_prefix("    ").unwrap_or(l)).collect::<Vec<_>>().join("\n");
    assert!(config.contains("allow_cross_namespace: true"), "node agents accept other pid namespaces");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    std::fs::create_dir_all(dir.path().join("token")).expect("token dir");
    write_secret(&dir.path().join("token/token"), &"ab".repeat(32));
    let config = config.replace("/run/varta", &d).replace("/etc/varta", &d);
    let path = dir.path().join("varta.yaml");
    std::fs::write(&path, config).expect("write");
    let out = Command::new(binary("varta-collector"))
        .args(["validate", "--config"])
        .arg(&path)
        .env("NODE_NAME", "node-1")
        .output()
        .expect("validate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = collector_cmd;
}

#[test]
fn the_kubernetes_scrape_example_passes_promtool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    write_secret(&token, &"ab".repeat(32));
    let text = std::fs::read_to_string(kit("kubernetes/scrape-config.yaml")).expect("scrape config");
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, text.replace("/etc/prometheus/varta/token", &token.display().to_string()))
        .expect("write");
    let (ok, said) = run(Command::new(peers::promtool()).args(["check", "config"]).arg(&path));
    assert!(ok, "promtool check config: {said}");
}
