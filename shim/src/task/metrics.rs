//! Guest cgroup statistics as containerd's cgroups v2 metrics, so `ctr task metrics` works.

use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use protocol::agent::StatsContainerResponse;

use crate::error::{TaskError, TaskResult};

/// Type URL containerd decodes metrics of a cgroups v2 task with.
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// The agent says "no limit" with 0; containerd's metrics say it with `u64::MAX` (what a
/// cgroup's "max" reads as), and its CRI computes `available_bytes` as limit minus working set
/// unless the limit is `u64::MAX`, so a 0 there would read as a near-2^64 availability.
fn limit_for_containerd(agent_limit: u64) -> u64 {
    if agent_limit == 0 {
        u64::MAX
    } else {
        agent_limit
    }
}

pub fn to_metrics(s: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    if let Some(p) = s.pids.as_ref() {
        m.pids = MessageField::some(PidsStat {
            current: p.current,
            limit: limit_for_containerd(p.limit),
            ..Default::default()
        });
    }
    if let Some(c) = s.cpu.as_ref() {
        m.cpu = MessageField::some(CPUStat {
            usage_usec: c.usage_usec,
            user_usec: c.user_usec,
            system_usec: c.system_usec,
            nr_periods: c.nr_periods,
            nr_throttled: c.nr_throttled,
            throttled_usec: c.throttled_usec,
            ..Default::default()
        });
    }
    if let Some(mem) = s.memory.as_ref() {
        m.memory = MessageField::some(MemoryStat {
            usage: mem.usage_bytes,
            usage_limit: limit_for_containerd(mem.limit_bytes),
            anon: mem.anon_bytes,
            file: mem.file_bytes,
            max_usage: mem.max_usage_bytes,
            ..Default::default()
        });
        m.memory_events = MessageField::some(MemoryEvents {
            oom: mem.oom_events,
            oom_kill: mem.oom_kill_events,
            ..Default::default()
        });
    }
    // An all-zero entry would read as a device that did no I/O; leave it out.
    if let Some(io) = s.io.as_ref().filter(|io| **io != Default::default()) {
        m.io = MessageField::some(IOStat {
            usage: vec![IOEntry {
                rbytes: io.read_bytes,
                wbytes: io.write_bytes,
                rios: io.read_ios,
                wios: io.write_ios,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    m
}

/// The metrics wrapped as containerd expects them in StatsResponse.
pub fn to_any(s: &StatsContainerResponse) -> TaskResult<Any> {
    let value = to_metrics(s)
        .write_to_bytes()
        .map_err(|e| TaskError::internal(format!("encoding metrics: {e}")))?;
    Ok(Any {
        type_url: METRICS_TYPE_URL.to_string(),
        value,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::agent::{CpuStats, IoStats, MemoryStats, PidsStats};

    #[test]
    fn guest_stats_map_onto_cgroup_v2_metrics() {
        let s = StatsContainerResponse {
            cpu: MessageField::some(CpuStats {
                usage_usec: 10,
                user_usec: 6,
                system_usec: 4,
                nr_throttled: 1,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStats {
                usage_bytes: 4096,
                limit_bytes: 1 << 20,
                anon_bytes: 1024,
                oom_kill_events: 2,
                ..Default::default()
            }),
            pids: MessageField::some(PidsStats {
                current: 3,
                limit: 0,
                ..Default::default()
            }),
            io: MessageField::some(IoStats {
                read_bytes: 7,
                write_ios: 9,
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.pids.current, 3);
        assert_eq!(
            m.pids.limit,
            u64::MAX,
            "no pids limit, as containerd spells it"
        );
        assert_eq!(m.cpu.usage_usec, 10);
        assert_eq!(m.cpu.user_usec, 6);
        assert_eq!(m.cpu.nr_throttled, 1);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.usage_limit, 1 << 20);
        assert_eq!(m.memory.anon, 1024);
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!(m.io.usage[0].rbytes, 7);
        assert_eq!(m.io.usage[0].wios, 9);
    }

    #[test]
    fn missing_sections_stay_empty() {
        let m = to_metrics(&StatsContainerResponse::default());
        assert!(m.pids.is_none() && m.memory.is_none() && m.io.is_none());
    }
}
