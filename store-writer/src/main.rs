//! ward-store-writer: the only process that writes the store and its database.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("ward-store-writer: not implemented yet");
    std::process::exit(1);
}
