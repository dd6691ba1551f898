//! What the host runs that dmmig hands work to: systemd, and whether it can reach us.

/// Whether systemd can take a process of ours into a unit: the host runs systemd, and this
/// process lives in its PID namespace. In a nested PID namespace (a container, `unshare -p`)
/// the pid `systemd-run --scope` hands systemd names another process, or none.
pub fn systemd_manages_us() -> bool {
    std::path::Path::new("/run/systemd/system").exists()
        && std::fs::read_to_string("/proc/self/status").is_ok_and(|s| !in_nested_pid_namespace(&s))
}

/// Whether `/proc/self/status` text `status` says its process is in a nested PID namespace:
/// its `NSpid` line has a pid for each namespace it is in, outermost first.
fn in_nested_pid_namespace(status: &str) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .is_some_and(|pids| pids.split_whitespace().count() > 1)
}

#[cfg(test)]
mod tests {
    use super::in_nested_pid_namespace;

    #[test]
    fn nested_pid_namespaces_are_seen() {
        assert!(!in_nested_pid_namespace("Name:\tdmmig\nNSpid:\t4242\n"));
        assert!(in_nested_pid_namespace("Name:\tdmmig\nNSpid:\t4242\t7\n"));
        assert!(!in_nested_pid_namespace("Name:\tdmmig\n"));
    }
}
