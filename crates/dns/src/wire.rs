//! Our record sets as DNS wire records and back, shared by the embedded server and the RFC 2136
//! provider.

use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType as HickoryType};
use valkey_dr_core::{RecordSet, RecordType};

/// The wire records of a set; a value that does not parse is left out.
pub fn to_records(set: &RecordSet) -> Vec<Record> {
    let Ok(name) = Name::from_ascii(&set.name) else {
        return Vec::new();
    };
    set.values
        .iter()
        .filter_map(|value| {
            let rdata = match set.rtype {
                RecordType::A => RData::A(A(value.parse().ok()?)),
                RecordType::Aaaa => RData::AAAA(AAAA(value.parse().ok()?)),
                RecordType::Cname => RData::CNAME(CNAME(Name::from_ascii(value).ok()?)),
                RecordType::Txt => RData::TXT(TXT::new(vec![value.clone()])),
            };
            Some(Record::from_rdata(name.clone(), set.ttl, rdata))
        })
        .collect()
}

pub fn to_hickory_type(rtype: RecordType) -> HickoryType {
    match rtype {
        RecordType::A => HickoryType::A,
        RecordType::Aaaa => HickoryType::AAAA,
        RecordType::Cname => HickoryType::CNAME,
        RecordType::Txt => HickoryType::TXT,
    }
}

/// The type and value of a wire record of one of our types; `None` for any other.
pub fn from_record(record: &Record) -> Option<(RecordType, String)> {
    Some(match &record.data {
        RData::A(a) => (RecordType::A, a.0.to_string()),
        RData::AAAA(a) => (RecordType::Aaaa, a.0.to_string()),
        RData::CNAME(c) => (RecordType::Cname, c.0.to_ascii()),
        RData::TXT(t) => (
            RecordType::Txt,
            t.txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
        ),
        _ => return None,
    })
}
