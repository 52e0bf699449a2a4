//! e2i-to-raw: convert an e2i stream, qcow2, normal e2image image or raw filesystem image
//! (optionally gzip/bzip2/xz/zstd-compressed, from a file, a pipe or stdin) to a raw image.

use e2i_cli::cli::to_raw::Args;
use e2i_cli::convert::{RawArgs, to_raw};
use e2i_cli::{Summary, parse_args, run};

const TOOL: &str = "e2i-to-raw";

fn main() -> std::process::ExitCode {
    let args: Args = parse_args(TOOL);
    let a = RawArgs {
        input: &args.input,
        output: &args.output,
        dest_offset: args.dest_offset,
        check: args.check,
        dry_run: args.dry_run,
        progress: args.progress,
        all_data: args.all_data,
        quiet: args.quiet,
        json: args.json,
        allow_scrambled: args.allow_scrambled,
        qcow2_only: false,
    };
    run(TOOL, Summary::new(args.json, TOOL), |sum| {
        to_raw(TOOL, &a, sum)
    })
}
