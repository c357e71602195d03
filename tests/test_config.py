import pytest

from ml_backend.config import MODEL_NAMES, ConfigError, load_settings


def test_defaults_match_the_deployment_guide(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEVICE", "DEFAULT_BOX_THRESHOLD", "DEFAULT_TEXT_THRESHOLD", "PRELOAD_MODELS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.device == "auto"
    assert settings.default_box_threshold == 0.3
    assert settings.default_text_threshold == 0.25
    assert settings.preload_models == []
    assert settings.model_id("sam3") == "facebook/sam3"


def test_guide_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICE", "cuda")
    monkeypatch.setenv("LOG_LEVEL", "info")
    monkeypatch.setenv("PRELOAD_MODELS", "grounding_dino, sam2")
    monkeypatch.setenv("RUNPOD_ENDPOINT_OD_ANNOTATION", "abc123xyz")
    settings = load_settings()
    assert settings.device == "cuda"
    assert settings.log_level == "INFO"
    assert settings.preload_models == ["grounding_dino", "sam2"]
    assert settings.runpod_endpoint_od_annotation == "abc123xyz"


def test_runpod_mode_against_a_local_worker_needs_no_endpoint_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_MODE", "runpod")
    monkeypatch.delenv("RUNPOD_ENDPOINT_OD_ANNOTATION", raising=False)
    monkeypatch.setenv("RUNPOD_BASE_URL", "http://127.0.0.1:8000")
    assert load_settings().runpod_base_url == "http://127.0.0.1:8000"


def test_preload_all_expands_to_every_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRELOAD_MODELS", "all")
    assert load_settings().preload_models == list(MODEL_NAMES)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEVICE", "tpu"),
        ("DEFAULT_BOX_THRESHOLD", "1.5"),
        ("PRELOAD_MODELS", "grounding_dino,yolo"),
        ("MAX_IMAGE_BYTES", "-1"),
        ("ALLOW_PRIVATE_URLS", "maybe"),
    ],
)
def test_invalid_values_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_runpod_mode_requires_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_MODE", "runpod")
    monkeypatch.delenv("RUNPOD_ENDPOINT_OD_ANNOTATION", raising=False)
    with pytest.raises(ConfigError, match="RUNPOD_ENDPOINT_OD_ANNOTATION"):
        load_settings()


def test_secrets_do_not_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret")
    monkeypatch.setenv("RUNPOD_API_KEY", "rp_supersecret")
    text = repr(load_settings())
    assert "supersecret" not in text


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("BASIC_AUTH_USER", "")
    monkeypatch.setenv("DEFAULT_BOX_THRESHOLD", "")
    settings = load_settings()
    assert settings.hf_token is None
    assert settings.basic_auth_user is None
    assert settings.default_box_threshold == 0.3
