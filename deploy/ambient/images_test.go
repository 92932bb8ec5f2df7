package ambient_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mazu-mesh/mazu-ztunnel/deploy/ambient"
	"golang.org/x/mod/modfile"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
)

// dockerfileStage is one FROM section of the Dockerfile.
type dockerfileStage struct {
	base, name   string
	instructions []string
}

// parseDockerfile splits a Dockerfile into stages. It joins continued
// lines and drops comments, which covers the Dockerfile in this repository,
// but it does not implement heredocs or parser directives.
func parseDockerfile(t *testing.T, text string) []dockerfileStage {
	t.Helper()
	var stages []dockerfileStage
	var logical strings.Builder
	for line := range strings.SplitSeq(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && logical.Len() == 0) {
			continue
		}
		if continued, ok := strings.CutSuffix(trimmed, `\`); ok {
			logical.WriteString(continued + " ")
			continue
		}
		logical.WriteString(trimmed)
		instruction := strings.Join(strings.Fields(logical.String()), " ")
		logical.Reset()
		if instruction == "" {
			continue
		}
		fields := strings.Fields(instruction)
		if strings.EqualFold(fields[0], "FROM") {
			stage := dockerfileStage{base: fields[1]}
			if len(fields) == 4 && strings.EqualFold(fields[2], "AS") {
				stage.name = fields[3]
			}
			stages = append(stages, stage)
			continue
		}
		if len(stages) == 0 {
			t.Fatalf("Dockerfile instruction %q comes before the first FROM", instruction)
		}
		stages[len(stages)-1].instructions = append(stages[len(stages)-1].instructions, instruction)
	}
	return stages
}

// TestDockerfile checks the Dockerfile against the repository, so that
// drift fails here. The builder's Go version must be go.mod's, and every
// command the build stage compiles must be a main package under cmd/ with a
// final stage of its name that runs it. Every image the chart pulls must
// have a stage. The test does not build the images.
func TestDockerfile(t *testing.T) {
	root := filepath.Join(ambient.ChartDir(), "..", "..", "..")
	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	stages := parseDockerfile(t, string(dockerfile))
	byName := map[string]dockerfileStage{}
	for _, stage := range stages {
		if stage.name != "" {
			byName[stage.name] = stage
		}
	}

	build, ok := byName["build"]
	if !ok {
		t.Fatalf("Dockerfile has no stage named build; stages: %v", stages)
	}

	t.Run("Go version", func(t *testing.T) {
		goMod, err := os.ReadFile(filepath.Join(root, "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		mod, err := modfile.ParseLax("go.mod", goMod, nil)
		if err != nil {
			t.Fatal(err)
		}
		parts := strings.Split(mod.Go.Version, ".")
		if len(parts) < 2 {
			t.Fatalf("go.mod's go line %q has no minor version", mod.Go.Version)
		}
		want := parts[0] + "." + parts[1]
		image, tag, _ := strings.Cut(build.base, ":")
		tag, _, _ = strings.Cut(tag, "-")
		if image != "golang" {
			t.Errorf("build stage starts from %q, want the golang image", build.base)
		}
		if tag != want && !strings.HasPrefix(tag, want+".") {
			t.Errorf("build stage uses Go %q, but go.mod says go %s: use golang:%s", tag, mod.Go.Version, want)
		}
	})

	buildCommand := regexp.MustCompile(`\./cmd/([A-Za-z0-9_-]+)`)
	var commands []string
	for _, instruction := range build.instructions {
		if strings.HasPrefix(instruction, "RUN ") && strings.Contains(instruction, "go build") {
			for _, m := range buildCommand.FindAllStringSubmatch(instruction, -1) {
				commands = append(commands, m[1])
			}
		}
	}
	if len(commands) == 0 {
		t.Fatal("build stage has no `go build` of ./cmd/...")
	}

	for _, command := range commands {
		t.Run(command, func(t *testing.T) {
			sources, err := filepath.Glob(filepath.Join(root, "cmd", command, "*.go"))
			if err != nil {
				t.Fatal(err)
			}
			isMain := slices.ContainsFunc(sources, func(file string) bool {
				text, err := os.ReadFile(file)
				return err == nil && regexp.MustCompile(`(?m)^package main$`).Match(text)
			})
			if !isMain {
				t.Errorf("the build stage compiles ./cmd/%s, which is not a main package in this repository", command)
			}

			stage, ok := byName[command]
			if !ok {
				t.Fatalf("Dockerfile builds %s but has no final stage named %s", command, command)
			}
			binary := "/usr/local/bin/" + command
			if !slices.Contains(stage.instructions, "COPY --from=build /out/"+command+" "+binary) {
				t.Errorf("stage %s does not copy /out/%s to %s; instructions: %q", command, command, binary, stage.instructions)
			}
			if !slices.Contains(stage.instructions, `ENTRYPOINT ["`+binary+`"]`) {
				t.Errorf("stage %s does not run %s; instructions: %q", command, binary, stage.instructions)
			}
		})
	}

	t.Run("chart images", func(t *testing.T) {
		chrt, err := loader.LoadDir(ambient.ChartDir())
		if err != nil {
			t.Fatal(err)
		}
		images := map[string]any{"image": chrt.Values["image"]}
		for _, part := range []string{"cni", "curator", "witness"} {
			section, _ := chrt.Values[part].(map[string]any)
			images[part+".image"] = section["image"]
		}
		for value, image := range images {
			name, _ := image.(string)
			if _, ok := byName[name]; !ok || name == "build" {
				t.Errorf("chart value %s = %q names no image stage of the Dockerfile", value, name)
			}
		}
	})
}
