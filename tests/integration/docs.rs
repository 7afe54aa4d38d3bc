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

#[test]
fn the_man_pages_pass_mandoc_lint() {
    let Ok(version) = std::process::Command::new("mandoc").arg("-V").output() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "mandoc is missing under CI: .ci/run installs it"
        );
        eprintln!("skipped: mandoc is not installed");
        return;
    };
    drop(version);
    let man = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    for page in files_under(&man).keys() {
        let out = std::process::Command::new("mandoc")
            .args(["-Tlint", "-W", "warning"])
            .arg(man.join(page))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(said.trim().is_empty(), "{page}: {said}");
        let text = fs::read_to_string(man.join(page)).unwrap();
        assert!(!text.contains('`'), "{page} shows literal backticks");
        assert!(text.contains("SEE ALSO"), "{page} has no SEE ALSO");
    }
    let top = fs::read_to_string(man.join("sessionlock.1")).unwrap();
    assert!(top.contains(".SH \"EXAMPLES\""));
}
