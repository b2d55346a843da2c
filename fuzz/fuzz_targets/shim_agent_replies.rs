//! Fuzz target: the shim's handling of what the agent (hostile, like its guest) replies: each
//! reply type decoded from arbitrary bytes, and the stats turned into containerd's metrics.
#![no_main]

use kata_shim::task::metrics;
use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use protocol::agent as pb;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            if let Ok(s) = pb::StatsContainerResponse::parse_from_bytes(bytes) {
                let _ = metrics::to_metrics(&s);
                let _ = metrics::to_any(&s);
            }
        }
        1 => drop(pb::WaitProcessResponse::parse_from_bytes(bytes)),
        2 => drop(pb::ReadStreamResponse::parse_from_bytes(bytes)),
        3 => drop(pb::ListProcessesResponse::parse_from_bytes(bytes)),
        4 => drop(pb::OOMEvent::parse_from_bytes(bytes)),
        _ => drop(pb::CreateContainerResponse::parse_from_bytes(bytes)),
    }
});
