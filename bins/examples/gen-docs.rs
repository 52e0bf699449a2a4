//! Write the man pages and shell completions of every tool: `gen-docs [DIR]` (default
//! `docs`), i.e. DIR/man/TOOL.1 and DIR/completions/{bash,zsh,fish}/…
//! Run by `ci/gen-docs.sh` and `just man`.

fn main() -> std::process::ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| std::path::PathBuf::from("docs"), Into::into);
    match e2i_cli::docs::generate(&dir) {
        Ok(files) => {
            eprintln!(
                "gen-docs: wrote {} files under {}",
                files.len(),
                dir.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-docs: {}: {e}", dir.display());
            std::process::ExitCode::FAILURE
        }
    }
}
