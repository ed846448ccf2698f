//! Believable people for the simulated fleet: names, time zones, e-mail addresses at the
//! reserved `example.*` domains, and phone numbers from the ranges set aside for fiction
//! (US `NXX 555-0100..0199`, UK Ofcom drama numbers `020 7946 0xxx`,
//! `028 9018 0xxx` and `029 2018 0xxx`, Australian ACMA drama numbers `0X 5550 0000..9999`), so no
//! real person is ever called or mailed.

use fastrand::Rng;

/// A generated person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// First name.
    pub first: String,
    /// Family name.
    pub last: String,
    /// IANA time zone.
    pub tz: &'static str,
    /// E.164 phone number.
    pub phone: String,
    /// E-mail address.
    pub email: String,
}

impl Person {
    /// "First Last".
    pub fn name(&self) -> String {
        format!("{} {}", self.first, self.last)
    }
}

const FIRST: &[&str] = &[
    "Maria", "James", "Aisha", "Chen", "Olivia", "Mateo", "Priya", "Liam", "Sofia", "Noah",
    "Fatima", "Lucas", "Hannah", "Kenji", "Amara", "Ethan", "Zara", "Diego", "Emma", "Omar",
    "Grace", "Ravi", "Chloe", "Samuel", "Leila", "Daniel", "Ines", "Felix", "Nora", "Tariq",
    "Isabel", "Hugo", "Mei", "Oscar", "Yara", "Theo", "Anika", "Jonas", "Lucia", "Marcus", "Elena",
    "Kofi", "Ruby", "Arjun", "Freya", "Malik", "Clara", "Mateus", "Ava", "Ibrahim", "Julia",
    "Finn", "Sana", "Leo", "Maya", "Tomas", "Layla", "Adam", "Rosa", "Kai",
];

const LAST: &[&str] = &[
    "Garcia",
    "Smith",
    "Okafor",
    "Wang",
    "Johnson",
    "Rossi",
    "Patel",
    "Brown",
    "Silva",
    "Nguyen",
    "Khan",
    "Muller",
    "Williams",
    "Tanaka",
    "Mensah",
    "Jones",
    "Ahmed",
    "Lopez",
    "Taylor",
    "Haddad",
    "Murphy",
    "Sharma",
    "Martin",
    "Cohen",
    "Kowalski",
    "Davies",
    "Fernandes",
    "Schmidt",
    "Evans",
    "Ali",
    "Moreau",
    "Lee",
    "Andersen",
    "Kim",
    "Novak",
    "Walker",
    "Costa",
    "Ivanova",
    "OBrien",
    "Yilmaz",
    "Hughes",
    "Sato",
    "Nowak",
    "Clarke",
    "Reyes",
    "Bianchi",
    "Okoro",
    "Larsen",
    "Mendes",
    "Wright",
];

/// US area codes used with the fictional 555-01XX exchange.
const US_AREAS: &[(u32, &str)] = &[
    (201, "America/New_York"),
    (202, "America/New_York"),
    (212, "America/New_York"),
    (215, "America/New_York"),
    (305, "America/New_York"),
    (404, "America/New_York"),
    (617, "America/New_York"),
    (646, "America/New_York"),
    (718, "America/New_York"),
    (704, "America/New_York"),
    (410, "America/New_York"),
    (412, "America/New_York"),
    (312, "America/Chicago"),
    (214, "America/Chicago"),
    (512, "America/Chicago"),
    (612, "America/Chicago"),
    (713, "America/Chicago"),
    (314, "America/Chicago"),
    (414, "America/Chicago"),
    (504, "America/Chicago"),
    (615, "America/Chicago"),
    (303, "America/Denver"),
    (801, "America/Denver"),
    (505, "America/Denver"),
    (602, "America/Phoenix"),
    (480, "America/Phoenix"),
    (520, "America/Phoenix"),
    (206, "America/Los_Angeles"),
    (213, "America/Los_Angeles"),
    (310, "America/Los_Angeles"),
    (415, "America/Los_Angeles"),
    (503, "America/Los_Angeles"),
    (510, "America/Los_Angeles"),
    (619, "America/Los_Angeles"),
    (702, "America/Los_Angeles"),
    (916, "America/Los_Angeles"),
    (408, "America/Los_Angeles"),
    (425, "America/Los_Angeles"),
    (818, "America/Los_Angeles"),
];

/// UK geographic drama ranges: area code digits after +44 and the fixed middle part.
const UK_AREAS: &[&str] = &["2079460", "2890180", "2920180"];

/// Australian drama ranges: area digit after +61, then 5550 XXXX.
const AU_AREAS: &[(u32, &str)] = &[
    (2, "Australia/Sydney"),
    (3, "Australia/Melbourne"),
    (7, "Australia/Brisbane"),
    (8, "Australia/Perth"),
];

const REGION_ORDER: [&str; 3] = ["us", "uk", "au"];

const MAIL_DOMAINS: &[&str] = &["example.com", "example.org", "example.net"];

/// Hands out unique fictional phone numbers and e-mail addresses.
#[derive(Debug, Default)]
pub struct PeopleFactory {
    used_phones: std::collections::HashSet<String>,
    used_emails: std::collections::HashSet<String>,
}

impl PeopleFactory {
    /// A fresh factory (nothing handed out yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// A new person in `region` (`us`, `uk` or `au`), unique phone and e-mail.
    pub fn person(&mut self, rng: &mut Rng, region: &str) -> Person {
        let first = FIRST[rng.usize(..FIRST.len())].to_owned();
        let last = LAST[rng.usize(..LAST.len())].to_owned();
        // Each range is finite: after many collisions, borrow another region's range.
        let mut attempt = 0u32;
        let (tz, phone) = loop {
            let r = if attempt < 64 {
                region
            } else {
                REGION_ORDER[(attempt as usize / 64) % 3]
            };
            attempt += 1;
            let candidate = match r {
                "uk" => {
                    let area = UK_AREAS[rng.usize(..UK_AREAS.len())];
                    ("Europe/London", format!("+44{area}{:03}", rng.u32(0..1000)))
                }
                "au" => {
                    let (d, tz) = AU_AREAS[rng.usize(..AU_AREAS.len())];
                    (tz, format!("+61{d}5550{:04}", rng.u32(0..10_000)))
                }
                _ => {
                    let (area, tz) = US_AREAS[rng.usize(..US_AREAS.len())];
                    (tz, format!("+1{area}55501{:02}", rng.u32(0..100)))
                }
            };
            if self.used_phones.insert(candidate.1.clone()) {
                break candidate;
            }
        };
        let base = format!("{}.{}", first.to_lowercase(), last.to_lowercase());
        let domain = MAIL_DOMAINS[rng.usize(..MAIL_DOMAINS.len())];
        let mut email = format!("{base}@{domain}");
        let mut n = 2;
        while !self.used_emails.insert(email.clone()) {
            email = format!("{base}{n}@{domain}");
            n += 1;
        }
        Person {
            first,
            last,
            tz,
            phone,
            email,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_cloud::domain::{Email, PhoneNumber, TimeZone};

    #[test]
    fn every_generated_person_passes_the_cloud_registry_checks() {
        let mut f = PeopleFactory::new();
        let mut rng = Rng::with_seed(7);
        for i in 0..3000 {
            let region = ["us", "uk", "au"][i % 3];
            let p = f.person(&mut rng, region);
            let phone = PhoneNumber::parse(&p.phone, "US")
                .unwrap_or_else(|e| panic!("{} rejected: {e}", p.phone));
            assert_eq!(phone.as_str(), p.phone);
            Email::parse(&p.email).unwrap();
            TimeZone::parse(p.tz).unwrap();
            assert!(
                p.email.ends_with("example.com")
                    || p.email.ends_with("example.org")
                    || p.email.ends_with("example.net")
            );
        }
        assert_eq!(f.used_phones.len(), 3000, "phones are unique");
        assert_eq!(f.used_emails.len(), 3000, "emails are unique");
    }

    #[test]
    fn ten_thousand_people_get_unique_numbers_even_when_one_region_runs_out() {
        let mut f = PeopleFactory::new();
        let mut rng = Rng::with_seed(3);
        for _ in 0..10_000 {
            f.person(&mut rng, "us");
        }
        assert_eq!(f.used_phones.len(), 10_000);
    }

    #[test]
    fn us_numbers_are_in_the_fictional_555_01xx_range() {
        let mut f = PeopleFactory::new();
        let mut rng = Rng::with_seed(1);
        for _ in 0..200 {
            let p = f.person(&mut rng, "us");
            assert_eq!(&p.phone[5..10], "55501", "{}", p.phone);
        }
    }
}
