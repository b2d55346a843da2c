//! Generates the protobuf messages and async ttrpc stubs from protos/agent.proto.
//! ttrpc-codegen parses .proto in pure Rust, so no protoc is needed.
use std::{fs, path::Path};
use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let proto = "protos/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    Codegen::new()
        .out_dir(&out_dir)
        .inputs([proto])
        .include("protos")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("ttrpc code generation for protos/agent.proto failed");

    // The generated files start with inner attributes (`#![allow(..)]`, `//!`), which `include!`
    // cannot take inside a module; lib.rs puts equivalent outer attributes on the modules.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = Path::new(&out_dir).join(name);
        let text = fs::read_to_string(&path).expect("generated file is readable");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !(l.starts_with("#![") || l.starts_with("//!"))
            })
            .collect();
        fs::write(&path, kept.join("\n")).expect("generated file is writable");
    }
}
