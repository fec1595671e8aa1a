//! Generates the gRPC code of `proto/greeter.proto`, with the protoc that the
//! `protoc-bin-vendored` crate ships, so that no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_build::compile_protos("proto/greeter.proto")?;
    Ok(())
}
