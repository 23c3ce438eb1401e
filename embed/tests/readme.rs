//! The embedding façade's README points at the `embedded` example itself
//! (a link, never a copy that could drift from the code the tests run).

#[test]
fn the_readme_links_the_embedded_example() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("embed/README.md");
    assert!(readme.contains("](examples/embedded.rs)"), "embed/README.md must link to examples/embedded.rs");
    assert!(std::path::Path::new(&format!("{root}/examples/embedded.rs")).is_file(), "the example exists");
    assert!(
        !readme.contains("```rust\n//! Embedding the liveness engine"),
        "the example is linked, not copied"
    );
}
