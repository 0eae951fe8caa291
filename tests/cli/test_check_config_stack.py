"""``check-config --kms-key`` on the local stack: bucket locations come from fake-gcs-server, through the client.

fake-gcs-server keeps every bucket in one location (US-CENTRAL1, whatever a create asks
for), so the refusal is shown with a key elsewhere rather than a bucket elsewhere.
"""

import pytest

from handlers.cli.kms import kms_location_for

pytestmark = pytest.mark.stack


def test_a_key_in_the_buckets_location_fits_and_one_elsewhere_is_refused(cli, scenario):
    location = scenario.storage().get_bucket(scenario.state_bucket).location
    key = f"projects/keys-1/locations/{kms_location_for(location)}/keyRings/imaging/cryptoKeys/dicom"
    config = scenario.config()

    fits = cli(*scenario.args(config, "check-config", "--kms-key", key))
    assert fits.code == 0, fits.err
    assert f"encryption key: {key} fits gs://{scenario.bucket}, gs://{scenario.state_bucket}" in fits.out

    other = "asia-south1" if kms_location_for(location) != "asia-south1" else "europe"
    refused = cli(*scenario.args(config, "check-config", "--kms-key", key.replace(f"/{kms_location_for(location)}/", f"/{other}/")))
    assert refused.code == 1 and refused.out == ""
    assert f"--kms-key is in {other}, gs://{scenario.bucket} in {location}" in refused.err
    assert f"gs://{scenario.state_bucket} in {location}" in refused.err
