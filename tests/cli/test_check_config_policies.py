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


def test_policies_are_printed_for_deploy_sh_in_every_yaml_form_the_loader_reads(cli, config_env, tmp_path, monkeypatch):
    """deploy.sh grants from these lines: quoted keys, a flow mapping over two lines, an alias and a
    ${NAME:-default} must count as the function reads them, or a policy fails with 403 at run time."""
    monkeypatch.delenv("HELD", raising=False)
    path = write_config(tmp_path / "c.yaml", """\
  - name: ct
    match: gs://inbox-bkt/ct/**.dcm
    store: main
    "on_failure": {"quarantine": "gs://${HELD:-held-bkt}/x/", 'move':
       yes}
  - name: mr
    match: gs://inbox-bkt/mr/**.dcm
    store: main
    on_failure: &tagged "tag"
    'on_conflict': "replace"
  - {name: us, match: "gs://inbox-bkt/us/**.dcm", store: main, on_failure: *tagged}
  - {name: xa, match: "gs://inbox-bkt/xa/**.dcm", store: main, on_failure: {quarantine: "gs://${STATE_BUCKET}-held/"}}
""")
    result = cli("--config", str(path), "check-config", "--policies")
    assert result.code == 0 and result.err == ""
    assert result.out == "tag=true\nmove=true\nreplace=true\nquarantine=held-bkt\nquarantine=state-bkt-held\n"


def test_no_policy_prints_false_and_no_bucket(cli, config_env):
    result = cli("check-config", "--policies")
    assert result.code == 0 and result.out == "tag=false\nmove=false\nreplace=false\n"


def test_policies_of_an_invalid_config_are_not_printed(cli, config_env, tmp_path):
    path = write_config(tmp_path / "c.yaml",
                        "  - {name: ct, match: gs://inbox-bkt/**.dcm, store: main, on_failure: tagg}\n")
    result = cli("--config", str(path), "check-config", "--policies")
    assert result.code == 1 and result.out == "" and "on_failure must be report, tag" in result.err
