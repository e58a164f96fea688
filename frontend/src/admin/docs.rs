//! Man pages and shell completions, generated from the clap definitions in `cli.rs`, and
//! committed under `doc/`. Regenerate them with
//!
//! ```sh
//! cargo run -p ward-frontend --bin ward-gen-docs
//! ```
//!
//! and a test (`the_committed_docs_are_current`) fails while the committed ones differ.

use std::path::{Path, PathBuf};

use clap::Command;
use clap_complete::Shell;

use super::cli::{daemon_command, ward_command};

/// Every generated file, relative to the repository's `doc/` directory, with its contents.
pub fn render() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let ward = ward_command();
    files.push((PathBuf::from("man/ward.1"), man_page(ward.clone(), "1")));
    files.push((
        PathBuf::from("man/ward-daemon.8"),
        man_page(daemon_command(), "8"),
    ));
    // The admin subcommands each get a page of their own, in section 8 (they change the
    // system or inspect it as root).
    for sub in ward.get_subcommands() {
        let name = sub.get_name();
        if name == "daemon" || name == "help" {
            continue;
        }
        let page = sub
            .clone()
            .name(format!("ward-{name}"))
            .bin_name(format!("ward {name}"));
        files.push((
            PathBuf::from(format!("man/ward-{name}.8")),
            man_page(page, "8"),
        ));
    }
    for (shell, file) in [
        (Shell::Bash, "completions/ward.bash"),
        (Shell::Zsh, "completions/_ward"),
        (Shell::Fish, "completions/ward.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut ward_command(), "ward", &mut out);
        files.push((PathBuf::from(file), out));
    }
    files
}

fn man_page(cmd: Command, section: &str) -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .manual("ward")
        .source(format!("ward {}", env!("CARGO_PKG_VERSION")))
        .render(&mut out)
        .expect("rendering into memory cannot fail");
    out
}

/// Writes every generated file under `dir`.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (relative, contents) in render() {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents)?;
        written.push(path);
    }
    Ok(written)
}

/// The repository's `doc/` directory (from this crate's manifest directory).
pub fn repository_doc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../doc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_docs_are_current() {
        let dir = repository_doc_dir();
        let mut stale = Vec::new();
        for (relative, contents) in render() {
            let path = dir.join(&relative);
            if std::fs::read(&path).ok().as_deref() != Some(contents.as_slice()) {
                stale.push(relative.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "doc/ is out of date ({}); run 'cargo run -p ward-frontend --bin ward-gen-docs'",
            stale.join(", ")
        );
    }

    #[test]
    fn the_pages_document_what_admins_look_for() {
        let files = render();
        let text = |name: &str| {
            let (_, contents) = files
                .iter()
                .find(|(p, _)| p.ends_with(name))
                .unwrap_or_else(|| panic!("{name} is not generated"));
            String::from_utf8(contents.clone()).unwrap()
        };
        let daemon = text("ward-daemon.8");
        for flag in [
            "\\-\\-stdio",
            "\\-\\-socket\\-path",
            "\\-\\-option",
            "\\-\\-busy\\-poll",
        ] {
            assert!(daemon.contains(flag), "ward-daemon.8 lacks {flag}");
        }
        assert!(daemon.contains("SIGHUP"));
        assert!(text("ward.1").contains("install"));
        assert!(text("ward-install.8").contains("\\-\\-dry\\-run"));
        assert!(text("ward.bash").contains("uninstall"));
        assert!(text("_ward").contains("#compdef ward"));
        assert!(text("ward.fish").contains("complete -c ward"));
    }
}
