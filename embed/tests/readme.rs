//! The README's embedding how-to shows the example exactly as it is.

#[test]
fn the_readme_embedding_section_shows_the_example_in_full() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let example = std::fs::read_to_string(format!("{root}/embed/examples/embedded.rs")).expect("example");
    let shown = ["README.md"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("{root}/{f}")).ok())
        .any(|text| text.contains(&format!("```rust\n{example}```")));
    assert!(shown, "README.md must show embed/examples/embedded.rs in full");
}
