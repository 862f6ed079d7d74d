//! Prints the StompGateway API reference generated from the CRD schema:
//!
//!     cargo run -q --example api-reference > docs/api-reference.md
//!
//! `tests/docs.rs` fails when the checked-in file differs from this output.

fn main() -> Result<(), stompgate::crd::reference::ReferenceError> {
    print!("{}", stompgate::crd::reference::markdown()?);
    Ok(())
}
