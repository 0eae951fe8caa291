"""check-config shows each rule's failure policies and rejects a quarantine loop."""

from tests.cli.conftest import write_config


def test_policies_are_shown(cli, config_env, tmp_path):
    path = write_config(tmp_path / "c.yaml", """\
  - name: ct
    match: gs://inbox-bkt/ct/**.dcm
    store: main
    on_failure: {quarantine: gs://quarantine-bkt/failed/, move: true}
    on_conflict: replace
  - name: rest
    match: gs://inbox-bkt/**.dcm
    store: main
    on_failure: tag
""")
    result = cli("--config", str(path), "check-config")
    assert result.code == 0, result.err
    assert ("       on failure   quarantine: copy to gs://quarantine-bkt/failed/NAME (NAME.gGENERATION.EXT if taken), then delete the failed "
            "generation\n       on conflict  replace: delete the stored instance, import the file again\n") in result.out
    assert "       on failure   tag the object (metadata dicom-import-error, dicom-import-batch)\n" in result.out


def test_a_quarantine_bucket_a_rule_watches_is_rejected(cli, config_env, tmp_path):
    path = write_config(tmp_path / "c.yaml", """\
  - name: ct
    match: gs://inbox-bkt/ct/**.dcm
    store: main
    on_failure:
      quarantine: gs://inbox-bkt/quarantine/
""")
    result = cli("--config", str(path), "check-config")
    assert result.code == 1 and result.out == ""
    assert result.err == (f"{path}:8: rule 'ct' quarantines into gs://inbox-bkt, which rule 'ct' watches: the copies "
                          "would be imported again (a loop); quarantine into a bucket no rule watches\n")
