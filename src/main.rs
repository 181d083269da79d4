//! The `hearth` binary: the command line in `cli`.

mod cli;

fn main() -> anyhow::Result<()> {
    cli::main()
}
