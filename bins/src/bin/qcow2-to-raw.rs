//! qcow2-to-raw: expand any qcow2 image (v2 or v3; from a file, a pipe or stdin, also
//! compressed) into a raw image.

use e2i_cli::cli::qcow2_to_raw::Args;
use e2i_cli::convert::{RawArgs, to_raw};
use e2i_cli::{Summary, parse_args, run};

const TOOL: &str = "qcow2-to-raw";

fn main() -> std::process::ExitCode {
    let args: Args = parse_args(TOOL);
    let a = RawArgs {
        input: &args.input,
        output: &args.output,
        dest_offset: args.dest_offset,
        check: args.check,
        dry_run: args.dry_run,
        progress: args.progress,
        all_data: false,
        quiet: args.quiet,
        json: args.json,
        allow_scrambled: args.allow_scrambled,
        qcow2_only: true,
    };
    run(TOOL, Summary::new(args.json, TOOL), |sum| {
        to_raw(TOOL, &a, sum)
    })
}
