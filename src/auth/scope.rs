//! Permission sets in Cozy's scope syntax: rules separated by spaces, each
//! `doctype[:verbs[:values]]`, for example `io.cozy.notes`, `io.cozy.notes:GET`,
//! `io.cozy.notes:GET,PUT:id1,id2` or `io.cozy.sharings:ALL:<sharing-id>`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::store::Doctype;

/// HTTP verbs a rule grants, as a bit set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Verbs(u8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get = 1,
    Post = 2,
    Put = 4,
    Patch = 8,
    Delete = 16,
}

const VERB_NAMES: [(Verb, &str); 5] =
    [(Verb::Get, "GET"), (Verb::Post, "POST"), (Verb::Put, "PUT"), (Verb::Patch, "PATCH"), (Verb::Delete, "DELETE")];

impl Verbs {
    pub const ALL: Verbs = Verbs(31);

    pub fn contains(self, verb: Verb) -> bool {
        self.0 & verb as u8 != 0
    }

    /// Whether every verb of `other` is in `self`.
    pub fn covers(self, other: Verbs) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn only(verb: Verb) -> Verbs {
        Verbs(verb as u8)
    }
}

impl Verb {
    /// The verb an HTTP method needs; HEAD reads like GET.
    pub fn from_method(m: &str) -> Option<Verb> {
        match m {
            "GET" | "HEAD" => Some(Verb::Get),
            "POST" => Some(Verb::Post),
            "PUT" => Some(Verb::Put),
            "PATCH" => Some(Verb::Patch),
            "DELETE" => Some(Verb::Delete),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub doctype: Doctype,
    pub verbs: Verbs,
    /// Document ids the rule is limited to; empty means every document of the doctype.
    pub values: Vec<String>,
}

/// A set of rules; what a token, a sharecode or an OAuth client may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PermissionSet {
    pub rules: Vec<Rule>,
}

/// Which documents of a doctype a permission set lets a caller reach for one verb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    None,
    All,
    Ids(Vec<String>),
}

impl PermissionSet {
    pub fn parse(s: &str) -> Result<PermissionSet, String> {
        let mut rules = Vec::new();
        for part in s.split_whitespace() {
            let mut fields = part.splitn(4, ':');
            let doctype = Doctype::parse(fields.next().unwrap_or_default())?;
            let verbs = match fields.next() {
                None | Some("ALL") => Verbs::ALL,
                Some(list) => {
                    let mut bits = 0u8;
                    for name in list.split(',') {
                        let (verb, _) = VERB_NAMES
                            .iter()
                            .find(|(_, n)| *n == name)
                            .ok_or_else(|| format!("unknown verb {name:?} in scope"))?;
                        bits |= *verb as u8;
                    }
                    Verbs(bits)
                }
            };
            let values: Vec<String> = match fields.next() {
                None => Vec::new(),
                Some(list) => list.split(',').map(str::to_owned).collect(),
            };
            if values.iter().any(String::is_empty) {
                return Err("empty value in scope".into());
            }
            if fields.next().is_some() {
                return Err("selectors other than the document id are not supported in scopes".into());
            }
            rules.push(Rule { doctype, verbs, values });
        }
        if rules.is_empty() {
            return Err("empty scope".into());
        }
        Ok(PermissionSet { rules })
    }

    /// The documents of `doctype` reachable with `verb`.
    pub fn reach(&self, doctype: &Doctype, verb: Verb) -> Reach {
        let mut ids = Vec::new();
        for rule in self.rules.iter().filter(|r| &r.doctype == doctype && r.verbs.contains(verb)) {
            if rule.values.is_empty() {
                return Reach::All;
            }
            ids.extend(rule.values.iter().cloned());
        }
        if ids.is_empty() {
            Reach::None
        } else {
            ids.sort();
            ids.dedup();
            Reach::Ids(ids)
        }
    }

    pub fn allows(&self, doctype: &Doctype, verb: Verb, id: Option<&str>) -> bool {
        match self.reach(doctype, verb) {
            Reach::None => false,
            Reach::All => true,
            Reach::Ids(ids) => id.is_some_and(|id| ids.iter().any(|v| v == id)),
        }
    }

    /// Whether every rule of `other` is granted by this set (used to check that a rule or a
    /// sub-permission stays within the caller's own permissions).
    pub fn covers(&self, other: &PermissionSet) -> bool {
        other.rules.iter().all(|o| {
            self.rules.iter().any(|r| {
                r.doctype == o.doctype
                    && r.verbs.covers(o.verbs)
                    && (r.values.is_empty() || (!o.values.is_empty() && o.values.iter().all(|v| r.values.contains(v))))
            })
        })
    }
}

impl fmt::Display for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(rule.doctype.as_str())?;
            if rule.verbs != Verbs::ALL || !rule.values.is_empty() {
                f.write_str(":")?;
                if rule.verbs == Verbs::ALL {
                    f.write_str("ALL")?;
                } else {
                    let names: Vec<&str> =
                        VERB_NAMES.iter().filter(|(v, _)| rule.verbs.contains(*v)).map(|(_, n)| *n).collect();
                    f.write_str(&names.join(","))?;
                }
            }
            if !rule.values.is_empty() {
                write!(f, ":{}", rule.values.join(","))?;
            }
        }
        Ok(())
    }
}

impl Serialize for PermissionSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PermissionSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PermissionSet::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> Doctype {
        Doctype::parse(s).unwrap()
    }

    #[test]
    fn parses_cozy_scopes_and_prints_them_back() {
        for s in [
            "io.cozy.notes",
            "io.cozy.notes:GET",
            "io.cozy.notes:GET,PUT:id1,id2",
            "io.cozy.sharings:ALL:abc io.cozy.files:GET",
        ] {
            assert_eq!(PermissionSet::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_malformed_scopes() {
        for s in ["", "IO.cozy", "io.cozy.notes:FETCH", "io.cozy.notes:GET:", "io.cozy.notes:GET:a:sel"] {
            assert!(PermissionSet::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn checks_doctype_verb_and_ids() {
        let p = PermissionSet::parse("io.cozy.notes:GET,PUT:a,b io.cozy.todos").unwrap();
        assert!(p.allows(&dt("io.cozy.notes"), Verb::Get, Some("a")));
        assert!(!p.allows(&dt("io.cozy.notes"), Verb::Get, Some("c")));
        assert!(!p.allows(&dt("io.cozy.notes"), Verb::Get, None));
        assert!(!p.allows(&dt("io.cozy.notes"), Verb::Delete, Some("a")));
        assert!(p.allows(&dt("io.cozy.todos"), Verb::Delete, None));
        assert!(!p.allows(&dt("io.cozy.files"), Verb::Get, None));
        assert_eq!(p.reach(&dt("io.cozy.notes"), Verb::Put), Reach::Ids(vec!["a".into(), "b".into()]));
    }

    #[test]
    fn covers_only_narrower_sets() {
        let p = PermissionSet::parse("io.cozy.notes:GET,PUT io.cozy.files:GET:x,y").unwrap();
        assert!(p.covers(&PermissionSet::parse("io.cozy.notes:GET").unwrap()));
        assert!(p.covers(&PermissionSet::parse("io.cozy.files:GET:x").unwrap()));
        assert!(!p.covers(&PermissionSet::parse("io.cozy.files:GET").unwrap()));
        assert!(!p.covers(&PermissionSet::parse("io.cozy.notes").unwrap()));
        assert!(!p.covers(&PermissionSet::parse("io.cozy.todos:GET").unwrap()));
    }
}
