#!/usr/bin/env python3
"""Helper of scripts/capture-oci-specs.sh (a maintainer's tool, not run by CI).

  cri-client.py capture SOCK STATE_DIR WORK_DIR OUT_PREFIX IMAGE
      Runs a kubelet-like pod (host network) and one container in it through CRI on SOCK,
      copies both bundles' config.json to OUT_PREFIX-cri-{sandbox,container}.json, then
      stops and removes them. Needs api_pb2*.py (CRI runtime/v1) on sys.path.
"""
import json, os, sys, time, uuid


def copy_spec(path, dst, timeout=30):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            sys.exit(f"no {path} after {timeout} s")
        time.sleep(0.1)
    with open(path) as f:
        spec = json.load(f)
    with open(dst, "w") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")
    print(dst)


def capture(sock, state, work, prefix, image):
    import grpc
    import api_pb2 as api, api_pb2_grpc
    rt = api_pb2_grpc.RuntimeServiceStub(grpc.insecure_channel("unix://" + sock))
    deadline = time.time() + 30
    while True:  # the CRI plugin starts after the socket answers
        try:
            rt.Version(api.VersionRequest(version="v1"), timeout=5)
            break
        except grpc.RpcError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    T = 60  # seconds, every call
    uid = str(uuid.uuid4())
    logs = os.path.join(work, "pods", uid)
    data = os.path.join(work, "cri-data")
    os.makedirs(logs, exist_ok=True)
    os.makedirs(data, exist_ok=True)
    pod = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="capture", uid=uid, namespace="default", attempt=0),
        log_directory=logs,  # no hostname: kubelet sets none for host-network pods
        dns_config=api.DNSConfig(servers=["10.96.0.10"], searches=["default.svc.cluster.local"], options=["ndots:5"]),
        labels={"app": "capture", "io.kubernetes.pod.name": "capture", "io.kubernetes.pod.namespace": "default",
                "io.kubernetes.pod.uid": uid},
        annotations={"kubernetes.io/config.source": "api", "example.com/note": "oci-spec capture"},
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent="/kata-rs-capture/pod" + uid,
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=api.NamespaceOption(network=api.NODE, pid=api.CONTAINER, ipc=api.POD)),
            sysctls={"kernel.shm_rmid_forced": "1"}))
    sid = rt.RunPodSandbox(api.RunPodSandboxRequest(config=pod), timeout=T).pod_sandbox_id
    try:
        copy_spec(os.path.join(state, "io.containerd.runtime.v2.task/k8s.io", sid, "config.json"),
                  prefix + "-cri-sandbox.json")
        ctr = api.ContainerConfig(
            metadata=api.ContainerMetadata(name="app", attempt=0),
            image=api.ImageSpec(image=image), command=["sleep"], args=["1000"], working_dir="/tmp",
            envs=[api.KeyValue(key="A", value="B"), api.KeyValue(key="KUBERNETES_SERVICE_HOST", value="10.96.0.1")],
            mounts=[api.Mount(container_path="/data", host_path=data, readonly=True,
                              propagation=api.PROPAGATION_PRIVATE)],
            labels={"io.kubernetes.container.name": "app", "io.kubernetes.pod.uid": uid},
            annotations={"io.kubernetes.container.restartCount": "0",
                         "io.kubernetes.container.terminationMessagePath": "/dev/termination-log"},
            log_path="app/0.log",
            linux=api.LinuxContainerConfig(
                resources=api.LinuxContainerResources(
                    cpu_period=100000, cpu_quota=50000, cpu_shares=512,
                    memory_limit_in_bytes=64 << 20, oom_score_adj=937),
                security_context=api.LinuxContainerSecurityContext(
                    capabilities=api.Capability(add_capabilities=["NET_RAW"], drop_capabilities=["MKNOD"]),
                    namespace_options=api.NamespaceOption(network=api.NODE, pid=api.CONTAINER, ipc=api.POD),
                    run_as_user=api.Int64Value(value=65534), run_as_group=api.Int64Value(value=65534),
                    supplemental_groups=[1000], no_new_privs=True,
                    seccomp=api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault),
                    masked_paths=["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                                  "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                                  "/proc/scsi", "/sys/firmware"],
                    readonly_paths=["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                                    "/proc/sys", "/proc/sysrq-trigger"])))
        cid = rt.CreateContainer(api.CreateContainerRequest(pod_sandbox_id=sid, config=ctr, sandbox_config=pod),
                                 timeout=T).container_id
        rt.StartContainer(api.StartContainerRequest(container_id=cid), timeout=T)
        copy_spec(os.path.join(state, "io.containerd.runtime.v2.task/k8s.io", cid, "config.json"),
                  prefix + "-cri-container.json")
        rt.StopContainer(api.StopContainerRequest(container_id=cid, timeout=1), timeout=T)
        rt.RemoveContainer(api.RemoveContainerRequest(container_id=cid), timeout=T)
    finally:
        rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=T)
        rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=T)


if __name__ == "__main__":
    {"capture": capture}[sys.argv[1]](*sys.argv[2:])
