//! The committed completions and man pages match what the binary generates.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::support::Sandbox;

fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        files.insert(name, fs::read(entry.path()).unwrap());
    }
    files
}

#[test]
fn committed_completions_and_man_pages_match_the_cli() {
    let sandbox = Sandbox::new();
    sandbox.cmd(["generate-docs", "gen"]).assert().success();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["completions", "man"] {
        let generated = files_under(&sandbox.path("gen").join(dir));
        let committed = files_under(&repo.join(dir));
        assert!(!generated.is_empty(), "nothing generated in {dir}/");
        assert_eq!(
            generated.keys().collect::<Vec<_>>(),
            committed.keys().collect::<Vec<_>>(),
            "{dir}/ drifted: run `cargo run -- generate-docs .` and commit"
        );
        for (name, content) in &generated {
            assert!(
                committed[name] == *content,
                "{dir}/{name} drifted: run `cargo run -- generate-docs .` and commit"
            );
        }
    }
}

#[test]
fn the_readme_exit_status_table_is_the_one_the_binary_renders() {
    let sandbox = Sandbox::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed = fs::read_to_string(repo.join("README.md")).unwrap();
    fs::create_dir(sandbox.path("gen")).unwrap();
    fs::write(sandbox.path("gen/README.md"), &committed).unwrap();
    sandbox.cmd(["generate-docs", "gen"]).assert().success();
    let generated = fs::read_to_string(sandbox.path("gen/README.md")).unwrap();
    assert!(generated.contains("| 76 | takeover"), "no table rendered");
    assert!(
        generated == committed,
        "README.md's exit-status table drifted: run `cargo run -- generate-docs .` and commit"
    );
}

#[test]
fn help_and_version_go_to_stdout_with_status_0() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd(["--version"])
        .assert()
        .success()
        .stdout(predicates::str::contains(env!("CARGO_PKG_VERSION")));
    sandbox
        .cmd(["run", "--help"])
        .assert()
        .success()
        .stdout(predicates::str::contains("--conflict-exit-code"));
}
