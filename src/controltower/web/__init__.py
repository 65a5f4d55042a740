"""Dashboard shell: NiceGUI mounted on the API's FastAPI app, login, layout and navigation; subsystems add pages."""
