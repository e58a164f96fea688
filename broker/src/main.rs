//! ward-broker: the small root process that supervises the others and starts builders.

fn main() {
    eprintln!("ward-broker: not implemented yet");
    std::process::exit(1);
}
