//! Every DNS backend passes the same battery.

use valkey_dr_dns::conformance::battery;
use valkey_dr_dns::embedded::Zone;

#[tokio::test]
async fn embedded_zone_passes_the_battery() {
    battery(&Zone::new("z.test"), "z.test.").await;
}
