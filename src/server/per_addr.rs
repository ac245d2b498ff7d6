//! At most `max_connections_per_address` connections from one client
//! address, so one peer that keeps reconnecting (a slowloris) cannot take
//! every `max_connections` slot and starve everybody else.
//!
//! IPv4-mapped IPv6 peers count as their IPv4 address; other IPv6 peers
//! count by their /64, since one host is usually handed a whole /64 and
//! could otherwise spread over it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Open connections per client address.
#[derive(Debug)]
pub struct PerAddress {
    limit: usize,
    /// std Mutex: a map update per accept and per close, never across `.await`.
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// A counter that allows `limit` connections per address.
    pub fn new(limit: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `ip`, or None when it already has `limit` open.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddrSlot> {
        let key = key(ip);
        let mut open = self.open.lock().ok()?;
        let n = open.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(AddrSlot {
            owner: self.clone(),
            key,
        })
    }
}

/// The address a connection is counted under.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// One connection counted against its address; released on drop.
#[derive(Debug)]
pub struct AddrSlot {
    owner: Arc<PerAddress>,
    key: IpAddr,
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.owner.open.lock() {
            if let Some(n) = open.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&self.key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_per_address_and_released_on_drop() {
        let p = PerAddress::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = p.take(a).unwrap();
        let _s2 = p.take(a).unwrap();
        assert!(p.take(a).is_none());
        // The mapped form of the same IPv4 address is the same client.
        assert!(p.take("::ffff:10.0.0.1".parse().unwrap()).is_none());
        assert!(p.take(b).is_some());
        drop(s1);
        assert!(p.take(a).is_some());
    }

    #[test]
    fn ipv6_counts_by_slash_64() {
        let p = PerAddress::new(1);
        let _s = p.take("2001:db8::1".parse().unwrap()).unwrap();
        assert!(p.take("2001:db8::ffff".parse().unwrap()).is_none());
        assert!(p.take("2001:db8:0:1::1".parse().unwrap()).is_some());
    }
}
