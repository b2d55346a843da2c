//! A guest that never reports a SIGKILLed container's exit (lying or wedged) cannot keep its
//! pod alive, end to end: real containerd, shim, QEMU and guest. The guest is wedged by
//! stopping QEMU (SIGSTOP): the agent then answers nothing, as a hostile agent might.

use std::time::Duration;

use kata_e2e::*;

const STATUS_TIMEOUT: Duration = Duration::from_secs(60);
const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);

fn signal(sig: &str, pid: i32) {
    let st = bounded("kill", QUICK_LIMIT)
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill {sig} {pid}");
}

#[test]
fn a_sigkilled_task_of_a_wedged_guest_exits_137_and_its_vm_is_stopped() {
    let ctrd = Containerd::start("wedged");
    let id = unique_id("wedged");
    let _guard = ctrd.guard(&id);
    ctrd.run_detached(&id, &["sleep", "1000"]);
    ctrd.wait_status(&id, "RUNNING", STATUS_TIMEOUT);
    let dir = sandbox_dir(&id);
    let qemu = pids_matching(&["qemu-system", &dir]);
    assert_eq!(qemu.len(), 1, "exactly one QEMU for sandbox {id}: {qemu:?}");
    signal("-STOP", qemu[0]);
    // The kill itself may fail (the agent never answers it); its deadline is the shim's.
    let kill = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    println!(
        "ctr task kill on a wedged guest: {:?} {}",
        kill.status,
        text(&kill.stderr)
    );
    ctrd.wait_status(&id, "STOPPED", STATUS_TIMEOUT);
    assert!(
        ctrd.log_tail(200)
            .contains("did not report the exit of container"),
        "the shim's log names the cause:\n{}",
        ctrd.log_tail(40)
    );
    assert_eq!(ctrd.delete_task(&id), 137);
    let left = wait_clean(&id, CLEAN_TIMEOUT);
    assert!(
        left.is_empty(),
        "sandbox {id} left things behind: {left:#?}\ncontainerd log:\n{}",
        ctrd.log_tail(30)
    );
}
