//! The access an application needs and nothing that steers the controller: an ACL user that reads
//! every key but cannot write the control keys (`__valkey-dr:*`), run admin commands (`CONFIG`,
//! `REPLICAOF`, `CLIENT PAUSE`, `FAILOVER`) or dangerous ones (`FLUSHALL`, `DEBUG`). A client that
//! writes an epoch mark could otherwise make a single controller believe in a newer epoch.

/// Every key the controller writes starts with this.
pub const CONTROL_PREFIX: &str = "__valkey-dr:";

/// The rules of an application user, as `ACL SETUSER <name> on ><password> <rules…>` or a
/// `user <name> on ><password> <rules…>` line of valkey.conf take them. Valkey ACLs only add
/// permissions, so "every key but the control keys" is written as the complement of the prefix:
/// each key that leaves the prefix at its i-th character (`<first i chars>[^<char i>]*`), and each
/// key that is a strict prefix of it.
pub fn application_rules() -> Vec<String> {
    let prefix: Vec<char> = CONTROL_PREFIX.chars().collect();
    let mut rules = vec!["resetkeys".to_string(), "%R~*".to_string()];
    for i in 0..prefix.len() {
        let head: String = prefix[..i].iter().collect();
        rules.push(format!("%W~{head}[^{}]*", prefix[i]));
        if i > 0 {
            rules.push(format!("%W~{head}"));
        }
    }
    rules.extend(["resetchannels", "&*", "+@all", "-@admin", "-@dangerous"].map(String::from));
    rules
}

/// A valkey.conf line creating the application user `name` with `password`.
pub fn application_user_line(name: &str, password: &str) -> String {
    format!(
        "user {name} on >{password} {}",
        application_rules().join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valkey's glob, enough of it for these rules: `*`, literals and `[^c]`.
    fn matches(pattern: &str, key: &str) -> bool {
        fn go(p: &[char], k: &[char]) -> bool {
            match p {
                [] => k.is_empty(),
                ['*', rest @ ..] => (0..=k.len()).any(|i| go(rest, &k[i..])),
                ['[', '^', c, ']', rest @ ..] => !k.is_empty() && k[0] != *c && go(rest, &k[1..]),
                [c, rest @ ..] => !k.is_empty() && k[0] == *c && go(rest, &k[1..]),
            }
        }
        let p: Vec<char> = pattern.chars().collect();
        let k: Vec<char> = key.chars().collect();
        go(&p, &k)
    }

    fn writable(key: &str) -> bool {
        application_rules()
            .iter()
            .filter_map(|r| r.strip_prefix("%W~"))
            .any(|pattern| matches(pattern, key))
    }

    #[test]
    fn every_key_but_the_control_keys_is_writable() {
        #[rustfmt::skip]
        let cases = [
            ("an ordinary key", "user:42", true),
            ("one underscore", "_x", true),
            ("a strict prefix of the control prefix", "__valkey-dr", true),
            ("another prefix sharing the start", "__valkey-db:1", true),
            ("the heartbeat", "__valkey-dr:heartbeat", false),
            ("the epoch mark", "__valkey-dr:epoch", false),
            ("any control key", "__valkey-dr:", false),
        ];
        for (case, key, expected) in cases {
            assert_eq!(writable(key), expected, "{case}: {key}");
        }
        // The security guide gives operators the same rules, word for word.
        let guide = include_str!("../../../docs/security.md");
        assert!(
            guide.contains(&application_rules().join(" ")),
            "docs/security.md must show the rules as application_rules() gives them"
        );
        for key in [crate::HEARTBEAT_KEY, crate::EPOCH_KEY] {
            assert!(key.starts_with(CONTROL_PREFIX) && !writable(key), "{key}");
        }
    }
}
