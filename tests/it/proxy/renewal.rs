//! A 401 from the API: one renewal for every request that saw it, then a
//! replay, so the client sees a 200.

use std::time::Duration;

use super::*;
use crate::support::*;

#[test]
fn a_key_deleted_on_the_admin_page_costs_one_new_key_and_concurrent_requests_are_replayed() {
    let s = standin(Duration::from_secs(3600));
    let t = TestDir::new();
    let addr = free_port();
    t.write_config(
        &s.base_url(),
        &format!(
            "[[credential]]\nname = \"mcp\"\nkind = \"access-key\"\nusername = \"{USER}\"\npassword-file = \"password\"\n\
             lifetime = \"1d\"\ngrace = \"1s\"\nretry-min = \"100ms\"\nretry-max = \"1s\"\n{}{}",
            output("mcp.env", "env"),
            proxy(&addr.to_string(), "mcp", "")
        ),
    );
    let d = daemon_with(&t, "info", &[]);
    wait_listening(addr, &d);
    let first = wait_env_key(&t, "mcp.env", &[], &d);
    wait_ready(addr, &d);
    assert_eq!(get(addr, "/v1.0/accesskeys", "").0, 200);
    let created = posts(&s);
    // Deleted on the admin page: the proxy's next requests get 401.
    assert!(s.delete_key(&info_of(&s, &first).id));
    let answers: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..5)
            .map(|_| scope.spawn(|| get(addr, "/v1.0/accesskeys?page_size=1", "").0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        answers,
        [200; 5],
        "every request replayed with the new key\n{}",
        d.log()
    );
    assert_eq!(posts(&s), created + 1, "one new key for all five\n{}", d.log());
    let second = wait_env_key(&t, "mcp.env", &[&first], &d);
    assert_ne!(first, second);
    assert_no_keys(&d.log(), &s);
}
