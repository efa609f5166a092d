"""The Train page's "Use this version" expander: the three ways an RL trainer gets rewards from a version (in
process, over HTTP, as an exported Hugging Face folder), with the version's id filled in. Text only."""
from __future__ import annotations

import streamlit as st


def usage_snippets(version_id: int) -> dict[str, str]:
    """Code for each way of using ``version_id``: ``python`` (RM Studio installed), ``server`` (HTTP, e.g.
    OpenRLHF's ``--remote_rm_url``) and ``export`` (transformers alone)."""
    return {
        "python": f"""from db.config import Settings
from db.session import Database
from rm_engine.serving.scoring import RewardModel, reward_function

settings = Settings.from_env()  # RMSTUDIO_HOME and RMSTUDIO_DB, as the app and rmstudio read them
model = RewardModel.load(Database(settings.db_url), settings, {version_id})
reward = reward_function(model, kind="z")  # TRL GRPOTrainer(reward_funcs=[reward], ...)
print(reward(["How do I bake bread?"], ["Mix flour, water, yeast and salt; knead; bake."]))""",
        "server": f"""rmstudio reward-server --model {version_id} --port 8600   # RMSTUDIO_REWARD_TOKEN=... to require a token
curl -s localhost:8600/score -d '{{"prompts": ["How do I bake bread?"], "completions": ["Mix, knead, bake."]}}'
# OpenRLHF: --remote_rm_url http://HOST:8600/score""",
        "export": f"""rmstudio models export {version_id} rm-v{version_id}   # or the Download .zip button above
# then, with transformers alone (the folder's README.md builds inputs as training did):
# AutoModelForSequenceClassification.from_pretrained("rm-v{version_id}", trust_remote_code=True)""",
    }


def use_section(version_id: int) -> None:
    """An expander with the snippets of :func:`usage_snippets`."""
    code = usage_snippets(version_id)
    with st.expander(f"Use version {version_id} for RL training"):
        st.caption("Rewards are z-scores against the version's training statistics unless you ask for raw ones: "
                   "only their order means something.")
        st.markdown("**In Python** (RM Studio installed: TRL GRPO `reward_funcs`)")
        st.code(code["python"], language="python")
        st.markdown("**Over HTTP** (an RL trainer in another process or on another machine)")
        st.code(code["server"], language="bash")
        st.markdown("**Without RM Studio** (a Hugging Face folder)")
        st.code(code["export"], language="bash")
