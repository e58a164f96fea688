//! ward-builder: sets up one build sandbox and execs the derivation builder.

fn main() {
    eprintln!("ward-builder: not implemented yet");
    std::process::exit(1);
}
