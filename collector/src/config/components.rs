//! Component sections (`receivers:`, `processors:`, `exporters:`): maps from
//! a component id `type[/name]` to that type's configuration.
//!
//! The map is deserialized by hand so that the type named in the id picks
//! the config struct while the YAML parser still knows where it is: unknown
//! types and unknown keys are reported with line and column.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// A component id: `type` or `type/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentId {
    pub kind: String,
    pub name: Option<String>,
}

impl ComponentId {
    pub fn parse(s: &str) -> Result<ComponentId, String> {
        let (kind, name) = match s.split_once('/') {
            Some((k, n)) => (k, Some(n)),
            None => (s, None),
        };
        let ok = |part: &str| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        };
        if !ok(kind) || name.is_some_and(|n| !ok(n)) {
            return Err(format!(
                "invalid component id {s:?}: expected `type` or `type/name` (letters, digits, `_`, `-`, `.`)"
            ));
        }
        Ok(ComponentId { kind: kind.to_owned(), name: name.map(str::to_owned) })
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{}", self.kind, n),
            None => f.write_str(&self.kind),
        }
    }
}

/// Where a component's configuration starts in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

/// One configured component.
#[derive(Debug)]
pub struct Component<T> {
    pub id: ComponentId,
    pub at: Position,
    pub config: T,
}

/// A family of component configs (all receivers, all exporters …).
pub trait ComponentFamily: Sized {
    /// Section name in the file, e.g. `receivers`.
    const SECTION: &'static str;
    /// Component types this build knows (kinds, then aliases).
    fn types() -> Vec<&'static str>;
    /// The component's own checks (see the registry).
    fn check(&self) -> Result<(), varta_pipeline::config::FieldError>;
    /// Deserializes the body of a component of type `kind` (an empty body,
    /// `type/name:` with nothing after it, means all defaults).
    fn body<'de, A: MapAccess<'de>>(kind: &str, map: &mut A) -> Result<Spanned<Self>, A::Error>;
}

/// Deserializes a component body as `Spanned<Option<C>>` → `Spanned<T>`.
pub fn spanned_body<'de, A, C, T>(map: &mut A, wrap: impl FnOnce(C) -> T) -> Result<Spanned<T>, A::Error>
where
    A: MapAccess<'de>,
    C: Deserialize<'de> + Default,
{
    let s: Spanned<Nullable<C>> = map.next_value()?;
    Ok(Spanned::new(wrap(s.value.0), s.referenced, s.defined))
}

/// A component body that may be empty (`debug:`), meaning all defaults.
/// Unlike `Option<C>`, it hands a present map straight to `C`, so errors
/// inside it keep their exact position.
struct Nullable<C>(C);

impl<'de, C: Deserialize<'de> + Default> Deserialize<'de> for Nullable<C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<C>(PhantomData<C>);
        impl<'de, C: Deserialize<'de> + Default> Visitor<'de> for V<C> {
            type Value = Nullable<C>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of settings, or nothing for the defaults")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Nullable(C::default()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Nullable(C::default()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                C::deserialize(de::value::MapAccessDeserializer::new(map)).map(Nullable)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Deserializes a component body that must be present (no defaults for
/// everything, e.g. a receiver needs its `transport`).
pub fn spanned_required<'de, A, C, T>(map: &mut A, wrap: impl FnOnce(C) -> T) -> Result<Spanned<T>, A::Error>
where
    A: MapAccess<'de>,
    C: Deserialize<'de>,
{
    let s: Spanned<C> = map.next_value()?;
    Ok(Spanned::new(wrap(s.value), s.referenced, s.defined))
}

/// All components of one family, in file order.
#[derive(Debug)]
pub struct Components<T>(pub Vec<Component<T>>);

impl<T> Default for Components<T> {
    fn default() -> Self {
        Components(Vec::new())
    }
}

impl<T> Components<T> {
    pub fn get(&self, id: &str) -> Option<&Component<T>> {
        self.0.iter().find(|c| c.id.to_string() == id)
    }
}

impl<'de, T: ComponentFamily> Deserialize<'de> for Components<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: ComponentFamily> Visitor<'de> for V<T> {
            type Value = Components<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a map of {} keyed by `type/name`", T::SECTION)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Components(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<Component<T>> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let id = ComponentId::parse(&key).map_err(de::Error::custom)?;
                    let types = T::types();
                    if !types.contains(&id.kind.as_str()) {
                        return Err(de::Error::custom(format!(
                            "unknown {} type `{}` in `{}` (this build knows: {})",
                            T::SECTION.trim_end_matches('s'),
                            id.kind,
                            id,
                            types.join(", ")
                        )));
                    }
                    if out.iter().any(|c| c.id == id) {
                        return Err(de::Error::custom(format!("duplicate {} id `{id}`", T::SECTION)));
                    }
                    let body = T::body(&id.kind, &mut map)?;
                    let at = Position { line: body.referenced.line(), column: body.referenced.column() };
                    out.push(Component { id, at, config: body.value });
                }
                Ok(Components(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::ComponentId;

    #[test]
    fn ids() {
        let id = ComponentId::parse("vlp/uds").expect("valid");
        assert_eq!((id.kind.as_str(), id.name.as_deref()), ("vlp", Some("uds")));
        assert_eq!(ComponentId::parse("tracker").expect("valid").to_string(), "tracker");
        for bad in ["", "/x", "vlp/", "a b", "vlp/x/y"] {
            assert!(ComponentId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
