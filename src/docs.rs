//! The shell completions and man pages, generated from the CLI definition itself.

use std::fs;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{self, Cli};

/// Write `completions/` (bash, zsh, fish, elvish, PowerShell) and `man/` under `dir`.
pub fn generate(dir: &Path) -> anyhow::Result<()> {
    let completions = dir.join("completions");
    let man = dir.join("man");
    for d in [&completions, &man] {
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let mut command = Cli::command();
    for shell in [
        Shell::Bash,
        Shell::Zsh,
        Shell::Fish,
        Shell::Elvish,
        Shell::PowerShell,
    ] {
        clap_complete::generate_to(shell, &mut command, "sessionlock", &completions).with_context(
            || {
                format!(
                    "cannot write {shell} completions to {}",
                    completions.display()
                )
            },
        )?;
    }
    clap_mangen::generate_to(command, &man)
        .with_context(|| format!("cannot write man pages to {}", man.display()))?;
    // The top page again, with real EXIT STATUS, FILES and ENVIRONMENT sections instead of
    // clap_mangen's generic one for the --help text.
    let page = man.join("sessionlock.1");
    fs::write(&page, top_page()?).with_context(|| format!("cannot write {}", page.display()))?;
    Ok(())
}

/// The roff of `sessionlock.1`.
fn top_page() -> std::io::Result<Vec<u8>> {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let page = clap_mangen::Man::new(command);
    let mut out = Vec::new();
    page.render_title(&mut out)?;
    page.render_name_section(&mut out)?;
    page.render_synopsis_section(&mut out)?;
    page.render_description_section(&mut out)?;
    page.render_options_section(&mut out)?;
    page.render_subcommands_section(&mut out)?;
    let codes: Vec<(&str, &str)> = crate::exit::TABLE
        .iter()
        .map(|r| (r.code, r.meaning))
        .collect();
    section(&mut out, "EXIT STATUS", &codes, Some(cli::OUTPUT_RULES));
    section(
        &mut out,
        "FILES",
        cli::FILES,
        Some("S is the sidecar of the session file."),
    );
    section(&mut out, "ENVIRONMENT", cli::ENVIRONMENT, None);
    page.render_version_section(&mut out)?;
    Ok(out)
}

/// A man page section of tagged paragraphs.
fn section(out: &mut Vec<u8>, title: &str, rows: &[(&str, &str)], note: Option<&str>) {
    use std::io::Write;
    let _ = writeln!(out, ".SH \"{title}\"");
    for (key, text) in rows {
        let _ = writeln!(out, ".TP\n\\fB{}\\fR\n{}", roff(key), roff(text));
    }
    if let Some(note) = note {
        let _ = writeln!(out, ".PP\n{}", roff(note));
    }
}

/// Text made safe for roff: backslashes, hyphens, and a leading dot or quote.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}
