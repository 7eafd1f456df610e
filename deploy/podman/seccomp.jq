# Podman's default seccomp profile (containers-common's seccomp.json) with
# bpf(2) and perf_event_open(2) allowed by CAP_BPF and CAP_PERFMON, as
# containerd's and CRI-O's default profiles allow them. The stock profile
# allows both only with CAP_SYS_ADMIN, which weft's DaemonSet does not grant.
#
#   jq -f deploy/podman/seccomp.jq /usr/share/containers/seccomp.json \
#     > weft-seccomp.json
#   podman run --security-opt seccomp=weft-seccomp.json ...
#
# Every other rule is the stock one. The two calls leave the CAP_SYS_ADMIN
# rules (the allow and the matching EPERM for everyone else) and come back
# as rules of their own: allowed with CAP_SYS_ADMIN as before, or with the
# capability the kernel itself checks since 5.8.
def moved: ["bpf", "perf_event_open"];
def allow($name; $cap):
  {names: [$name], action: "SCMP_ACT_ALLOW", includes: {caps: [$cap]}};

if ([.syscalls[].names[]] | index("bpf")) == null then
  error("no bpf rule in this profile: is it Podman's seccomp.json?")
else . end
| .syscalls |= (
    map(.names -= moved | select(.names | length > 0))
    + [allow("bpf"; "CAP_SYS_ADMIN"), allow("bpf"; "CAP_BPF"),
       allow("perf_event_open"; "CAP_SYS_ADMIN"),
       allow("perf_event_open"; "CAP_PERFMON")]
  )
